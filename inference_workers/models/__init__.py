"""Model registry (object storage), default model builds, and handler construction from a model."""

from __future__ import annotations

from typing import Any


def load_handler(pool_or_name: str, version: str | None = "latest", registry: Any = None, **kwargs: Any):
    """See `catalog.load_handler`; imported lazily so `import inference_workers.models` stays light."""
    from .catalog import load_handler as _load

    return _load(pool_or_name, version, registry, **kwargs)


__all__ = ["load_handler"]
