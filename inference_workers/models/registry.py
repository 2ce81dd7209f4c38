"""Versioned model artifacts in object storage: `models/<name>/<version>/` plus `manifest.json`.

Workers never reach a model hub: a model is built once (converted or trained),
published here, and fetched into a local cache that is verified file by file
against the manifest's sha256 (a corrupted or partial cache is re-fetched).
Versions are immutable: re-publishing identical files is a no-op, different files
under an existing version are refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rscf.s3 import s3_client
from rscf.s3_security import ADMIN
from rscf.settings import SETTINGS

PREFIX = "models"
MANIFEST = "manifest.json"


class RegistryError(RuntimeError):
    """The registry cannot answer (unknown model or version, conflicting publish, bad checksum)."""


@dataclass
class Manifest:
    name: str
    version: str
    handler: str  # class name in inference_workers.handlers.HANDLER_CLASSES
    files: dict[str, str]  # relative path -> sha256
    created_at: str
    params: dict[str, Any] = field(default_factory=dict)  # handler constructor arguments
    metrics: dict[str, Any] = field(default_factory=dict)  # size, parameter count, training loss...

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Manifest":
        data = json.loads(text)
        return cls(**{k: data[k] for k in ("name", "version", "handler", "files", "created_at")},
                   params=data.get("params") or {}, metrics=data.get("metrics") or {})


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def local_files(root: Path) -> dict[str, str]:
    """Relative path -> sha256 for every file under `root` except a manifest."""
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel != MANIFEST:
            files[rel] = sha256_file(path)
    return files


def version_sort_key(version: str) -> tuple:
    """Natural order: "10" after "9", "1.10" after "1.9"."""
    parts = []
    for chunk in version.replace("-", ".").split("."):
        parts.append((0, int(chunk), "") if chunk.isdigit() else (1, 0, chunk))
    return tuple(parts)


class ModelRegistry:
    def __init__(self, client=None, bucket: str | None = None, cache_dir: Path | None = None,
                 identity: str = ADMIN):
        # the operator CLI publishes as the admin; workers read with their own key (catalog.load_handler)
        self.client = client or s3_client(identity=identity)
        self.bucket = bucket or SETTINGS.buckets.models
        self.cache_dir = Path(cache_dir or SETTINGS.paths.models)

    # -- object store helpers ----------------------------------------------------------------
    def _key(self, name: str, version: str, rel: str = "") -> str:
        return f"{PREFIX}/{name}/{version}/{rel}"

    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            self.client.make_bucket(self.bucket)

    def _get_bytes(self, key: str) -> bytes | None:
        from minio.error import S3Error

        try:
            resp = self.client.get_object(self.bucket, key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket"):
                return None
            raise
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    # -- reading -------------------------------------------------------------------------------
    def manifest(self, name: str, version: str) -> Manifest:
        data = self._get_bytes(self._key(name, version, MANIFEST))
        if data is None:
            raise RegistryError(f"no model {name} version {version} in s3://{self.bucket}/{PREFIX}/")
        return Manifest.from_json(data)

    def versions(self, name: str) -> list[str]:
        """Published versions of `name` (a version counts once its manifest exists), oldest first."""
        if not self.client.bucket_exists(self.bucket):
            return []
        found = []
        for obj in self.client.list_objects(self.bucket, prefix=f"{PREFIX}/{name}/", recursive=True):
            parts = obj.object_name.split("/")
            if len(parts) == 4 and parts[3] == MANIFEST:
                found.append(parts[2])
        return sorted(found, key=version_sort_key)

    def list_models(self) -> list[Manifest]:
        if not self.client.bucket_exists(self.bucket):
            return []
        out = []
        for obj in self.client.list_objects(self.bucket, prefix=f"{PREFIX}/", recursive=True):
            parts = obj.object_name.split("/")
            if len(parts) == 4 and parts[3] == MANIFEST:
                out.append(self.manifest(parts[1], parts[2]))
        return sorted(out, key=lambda m: (m.name, version_sort_key(m.version)))

    def resolve(self, name: str, version: str = "latest") -> str:
        """A concrete version: `latest` is the most recently published (ties: highest version)."""
        if version != "latest":
            self.manifest(name, version)  # raises if missing
            return version
        versions = self.versions(name)
        if not versions:
            raise RegistryError(f"no published version of model {name}")
        manifests = [self.manifest(name, v) for v in versions]
        best = max(manifests, key=lambda m: (m.created_at, version_sort_key(m.version)))
        return best.version

    # -- writing -------------------------------------------------------------------------------
    def publish(
        self,
        local_dir: Path | str,
        name: str,
        version: str,
        handler: str,
        params: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        progress: bool = False,
    ) -> Manifest:
        """Upload every file of `local_dir`, then the manifest (so a half-upload is never visible)."""
        from inference_workers.handlers import HANDLER_CLASSES

        if handler not in HANDLER_CLASSES:
            raise RegistryError(f"unknown handler {handler!r}; one of {sorted(HANDLER_CLASSES)}")
        if "/" in name or "/" in version or version == "latest" or not name or not version:
            raise RegistryError(f"bad model name/version {name!r}/{version!r}")
        root = Path(local_dir)
        if not root.is_dir():
            raise RegistryError(f"{root} is not a directory")
        files = local_files(root)
        if not files:
            raise RegistryError(f"{root} holds no files")
        self.ensure_bucket()
        existing = self._get_bytes(self._key(name, version, MANIFEST))
        if existing is not None:
            old = Manifest.from_json(existing)
            if old.files == files and old.handler == handler:
                return old
            raise RegistryError(f"{name} version {version} exists with different content; publish a new version")
        size = sum((root / rel).stat().st_size for rel in files)
        from tqdm import tqdm

        with tqdm(total=size, unit="B", unit_scale=True, desc=f"publish {name}/{version}",
                  disable=not progress) as bar:
            for rel in files:
                path = root / rel
                self.client.fput_object(self.bucket, self._key(name, version, rel), str(path))
                bar.update(path.stat().st_size)
        manifest = Manifest(
            name=name, version=version, handler=handler, files=files,
            created_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            params=params or {}, metrics={"bytes": size, **(metrics or {})},
        )
        body = manifest.to_json().encode()
        self.client.put_object(self.bucket, self._key(name, version, MANIFEST), io.BytesIO(body),
                               len(body), content_type="application/json")
        return manifest

    # -- fetching ------------------------------------------------------------------------------
    def cache_path(self, name: str, version: str) -> Path:
        return self.cache_dir / name / version

    def verify(self, path: Path, manifest: Manifest) -> list[str]:
        """Files of the manifest missing or differing in a local copy."""
        return [rel for rel, digest in manifest.files.items()
                if not (path / rel).is_file() or sha256_file(path / rel) != digest]

    def fetch(self, name: str, version: str = "latest", progress: bool = False) -> Path:
        """A verified local copy of the model; only missing or corrupted files are downloaded."""
        version = self.resolve(name, version)
        manifest = self.manifest(name, version)
        dest = self.cache_path(name, version)
        dest.mkdir(parents=True, exist_ok=True)
        bad = self.verify(dest, manifest)
        from tqdm import tqdm

        for rel in tqdm(bad, desc=f"fetch {name}/{version}", unit="file", disable=not progress or not bad):
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
            os.close(fd)
            try:
                self.client.fget_object(self.bucket, self._key(name, version, rel), tmp)
                if sha256_file(Path(tmp)) != manifest.files[rel]:
                    raise RegistryError(f"checksum mismatch for {name}/{version}/{rel} in the store")
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        (dest / MANIFEST).write_text(manifest.to_json())
        return dest

    def delete(self, name: str, version: str) -> int:
        """Remove one version (tests and operators); returns objects deleted."""
        keys = [o.object_name for o in self.client.list_objects(
            self.bucket, prefix=self._key(name, version), recursive=True)]
        for key in keys:
            self.client.remove_object(self.bucket, key)
        shutil.rmtree(self.cache_path(name, version), ignore_errors=True)
        return len(keys)


def unpublished(names: list[str], registry: ModelRegistry | None = None) -> list[str]:
    """The models of `names` with no published version (`rscf models build-defaults` publishes the defaults):
    a benchmark checks before it starts workers that would only crash-loop on them."""
    registry = registry or ModelRegistry()
    missing = []
    for name in dict.fromkeys(names):
        try:
            registry.resolve(name)
        except RegistryError:
            missing.append(name)
    return missing
