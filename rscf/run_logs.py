"""Per-run log files (a benchmark's job and echo worker, a backfill's results writer) that would otherwise
pile up: on 2026-12-04 `.data/logs` held 127 `echo-rscf-bench*` logs (up to 28 MB each) and 44
`backfill-*-results.log`, and nothing removed them. Opening a new one removes the oldest of its family
beyond `RUN_LOGS_KEPT`; a removed file a process still writes to lives on until it closes it (POSIX)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import BinaryIO

from rscf.settings import SETTINGS

RUN_LOGS_KEPT = 30  # per family: the last runs to read back, a few MB each
_RUN_ID = re.compile(r"[0-9a-f]{6,}")


def family(name: str) -> str:
    """The glob of every log named like ``name`` but for its run ids (runs of 6+ hex digits)."""
    return _RUN_ID.sub("*", name)


def prune(directory: Path, pattern: str, keep: int = RUN_LOGS_KEPT) -> list[Path]:
    """Remove all but the ``keep`` most recently written files matching ``pattern``; returns the removed."""
    files = sorted((p for p in directory.glob(pattern) if p.is_file()), key=lambda p: p.stat().st_mtime,
                   reverse=True)
    removed = []
    for old in files[keep:]:
        try:
            old.unlink()
            removed.append(old)
        except FileNotFoundError:  # another run pruned it first
            pass
    return removed


def open_run_log(name: str, directory: Path | None = None, keep: int = RUN_LOGS_KEPT) -> BinaryIO:
    """Append to ``directory/name`` (default: the stack's logs), after pruning its family to ``keep - 1``."""
    directory = directory or SETTINGS.paths.logs
    directory.mkdir(parents=True, exist_ok=True)
    pattern = family(name)
    if pattern != name:  # a name without a run id is one file, not a family
        prune(directory, pattern, keep=max(keep - 1, 0))
    return open(directory / name, "ab")
