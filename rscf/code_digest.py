"""Which code a Flink job was submitted with.

A job the JobManager recovers from its HA store keeps the job graph it was submitted with, while the
TaskManager imports the modules on disk now: after a code change the old wiring meets new modules
(measured: an IndexError restart loop once the finals sink gained a headers column). The job carries
this digest as a global job parameter (Web UI: the job's Configuration tab), and `rscf job status` and
`rscf up` compare it with the checkout's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from rscf.settings import SETTINGS

CODE_DIRS = ("jobs", "operators", "schemas", "rscf")  # what a job imports inside the TaskManager
GLOBAL_PARAMETER = "rscf.code-digest"


def code_digest(repo: Path | None = None) -> str:
    """Hash of the Python, Avro and model files under CODE_DIRS (3.5 ms here)."""
    repo = repo or SETTINGS.paths.repo
    h = hashlib.sha256()
    for top in CODE_DIRS:
        for path in sorted((repo / top).rglob("*")):
            if path.suffix in (".py", ".avsc", ".npz") and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(repo)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()
