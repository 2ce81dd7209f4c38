"""The registry proxy's Caddyfile (deploy/local/registry_proxy.py), checked by Caddy itself: an anonymous
registration becomes the subject's look-up, anything with a credential or any other path passes as it is.
The live behaviour is in tests/integration/test_registry_auth.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from deploy.local import installed, registry_proxy


@pytest.fixture()
def adapted(tmp_path) -> dict:
    caddy = Path(installed.caddy_binary())
    if not caddy.exists():
        pytest.skip("Caddy is not built here (RSCF_FLINK_REST_AUTH=0 and RSCF_REGISTRY_AUTH=0)")
    conf = tmp_path / "Caddyfile"
    conf.write_text(registry_proxy.caddyfile(18085, 18087))
    out = subprocess.run([str(caddy), "adapt", "--config", str(conf), "--adapter", "caddyfile"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_anonymous_registration_is_rewritten_to_the_look_up_and_the_rest_passes(adapted):
    server = adapted["apps"]["http"]["servers"]["srv0"]
    assert server["listen"] == ["127.0.0.1:18085"]
    routes = server["routes"]
    rewrite = next(r for r in routes if r["handle"][0]["handler"] == "rewrite")
    match = rewrite["match"][0]
    assert match["method"] == ["POST"] and match["not"] == [{"header": {"Authorization": ["*"]}}]
    import re

    pattern = re.compile(match["path_regexp"]["pattern"])
    assert pattern.match("/apis/ccompat/v7/subjects/genai.prompts-value/versions")
    assert not pattern.match("/apis/ccompat/v7/subjects/genai.prompts-value")  # the look-up itself
    assert not pattern.match("/apis/ccompat/v7/subjects/a/versions/1")  # reads of a version
    assert not pattern.match("/apis/registry/v3/groups/default/artifacts")  # Apicurio's API: its own auth
    assert rewrite["handle"][0]["uri"] == "/apis/ccompat/{http.regexp.register.1}/subjects/{http.regexp.register.2}"
    proxy = next(r for r in routes if r["handle"][0]["handler"] == "reverse_proxy")
    assert proxy["handle"][0]["upstreams"] == [{"dial": "127.0.0.1:18087"}]
    assert '"host"' not in json.dumps(server["routes"]), "any Host header (localhost too)"
