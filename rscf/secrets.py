"""Secrets generated on this machine, kept under the data dir with owner-only permissions.

Nothing secret is committed: each value is created on first use (install or the first
`rscf up`) in ``<data>/secrets`` (mode 0700), one file per secret (mode 0600), written
atomically so a concurrent reader never sees half a key. Callers never log the values.
"""

from __future__ import annotations

import json
import os
import secrets as _random
import tempfile
from pathlib import Path
from typing import Callable
from urllib.parse import quote, urlsplit, urlunsplit


def secrets_dir(path: Path) -> Path:
    """``path`` (normally ``SETTINGS.paths.secrets``), created with mode 0700. (No settings import here:
    rscf.settings itself reads the S3 secret through this module.)"""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically (temp file in the same dir, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_create(name: str, make: Callable[[], bytes], base: Path) -> bytes:
    """The secret file ``name``, created with ``make()`` if absent. A lost race keeps the first writer's."""
    path = secrets_dir(base) / name
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data = make()
    try:  # O_EXCL: two processes starting at once must agree on one value
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return data


def random_token(nbytes: int = 32) -> bytes:
    """URL-safe random text (256 bits by default)."""
    return _random.token_urlsafe(nbytes).encode("ascii")


def mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o777


def s3_secret_key(data_dir: str, given: str = "", given_file: str = "") -> str:
    """``given`` (RSCF_S3_SECRET_KEY), else the file ``given_file`` names, else the secrets file, else (a data
    dir from before secrets were generated) the key its S3 server was configured with (``s3/s3.json``),
    kept in the secrets file; else a new random one. rscf/settings.py reads the env and caches the key."""
    if given:
        return given
    if given_file:  # compose secrets, Kubernetes Secret volumes
        return Path(given_file).read_text().strip()

    def existing_or_new() -> bytes:
        try:
            identities = json.loads((Path(data_dir) / "s3" / "s3.json").read_text())["identities"]
            return identities[0]["credentials"][0]["secretKey"].encode()
        except (OSError, ValueError, KeyError, IndexError):
            return random_token(24)

    return load_or_create("s3_secret_key", existing_or_new, Path(data_dir) / "secrets").decode().strip()


def redis_credential(url: str, user: str, password: str, password_file: str) -> str:
    """``url`` with ``user``'s password (``password``, else the file ``password_file`` names) in it, if both
    are given and the URL names no user: a container handed a Redis Secret connects as that user."""
    password = password or (Path(password_file).read_text().strip() if user and password_file else "")
    parts = urlsplit(url)
    if not (user and password) or parts.username or parts.password:
        return url
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc}"
    return urlunsplit(parts._replace(netloc=netloc))
