"""Generated secrets: owner-only files, one value per secret even when two processes race, and the S3
secret key never committed (env, else generated, else adopted from a data dir's existing S3 config)."""

from __future__ import annotations

import json
import subprocess
import sys

from rscf.secrets import load_or_create, mode_of, secrets_dir, write_private
from rscf.settings import REPO_ROOT


def test_secret_files_are_0600_in_a_0700_dir(tmp_path):
    base = secrets_dir(tmp_path / "s")
    assert mode_of(base) == 0o700
    value = load_or_create("k", lambda: b"v1", base)
    assert value == b"v1" and mode_of(base / "k") == 0o600
    assert load_or_create("k", lambda: b"v2", base) == b"v1"  # created once, then read
    write_private(base / "w", b"x")
    assert mode_of(base / "w") == 0o600 and (base / "w").read_bytes() == b"x"


def _secret(data_dir, env_secret=None):
    env = {"RSCF_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"}
    if env_secret:
        env["RSCF_S3_SECRET_KEY"] = env_secret
    code = "from rscf.settings import SETTINGS; print(SETTINGS.s3.secret_key)"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_s3_secret_is_generated_adopted_or_from_the_environment(tmp_path):
    fresh = _secret(tmp_path / "fresh")
    assert len(fresh) >= 32 and fresh == _secret(tmp_path / "fresh")
    assert mode_of(tmp_path / "fresh" / "secrets" / "s3_secret_key") == 0o600
    assert fresh != _secret(tmp_path / "other")
    old = tmp_path / "old"
    (old / "s3").mkdir(parents=True)
    (old / "s3" / "s3.json").write_text(json.dumps(
        {"identities": [{"name": "rscf", "credentials": [{"accessKey": "rscf", "secretKey": "kept"}]}]}))
    assert _secret(old) == "kept"  # a running stack keeps working after the upgrade
    assert _secret(tmp_path / "fresh", env_secret="from-env") == "from-env"


def test_no_default_secret_is_committed():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    offenders = []
    for name in tracked.split():
        path = REPO_ROOT / name
        if path.suffix in (".py", ".yml", ".yaml", ".sh", ".json", ".toml", ".md", ".properties", ".env") \
                and path.is_file() and "rscf-local-secret" in path.read_text(errors="replace") \
                and path.name != "test_rscf_secrets.py":
            offenders.append(name)
    assert offenders == []
