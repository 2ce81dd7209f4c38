"""Flink's REST API behind its lock (issue #16, README "Flink REST API"): through the proxy reads are open
and every write (job submission is code execution) needs the operator's password; the JobManager's own
endpoint answers only a client presenting the Flink REST certificate. Real JobManager, real Caddy."""

from __future__ import annotations

import ssl
import subprocess
import sys

import httpx
import pytest

from rscf.settings import SETTINGS
from tests.helpers.stack_services import services_up

SERVICES = ["zookeeper", "flink-jobmanager", "flink-taskmanager", "flink-rest-proxy"]
NO_SUCH_JOB = "0" * 32  # a write that reaches Flink gets 404, one stopped at the proxy 401

pytestmark = pytest.mark.skipif(not SETTINGS.flink_rest_auth, reason="RSCF_FLINK_REST_AUTH=0")


@pytest.fixture(scope="module")
def flink():
    services_up(SERVICES, "Flink and its REST proxy")
    return SETTINGS.flink_url


def _operator() -> tuple[str, str]:
    from deploy.local import flink_rest

    return flink_rest.OPERATOR, flink_rest.operator_password()


def test_reads_through_the_proxy_need_no_credential(flink):
    r = httpx.get(f"{flink}/overview", timeout=10)
    assert r.status_code == 200 and r.json()["taskmanagers"] >= 1
    assert httpx.get(f"{flink}/jobs/overview", timeout=10).status_code == 200
    assert "<html" in httpx.get(f"{flink}/", timeout=10).text.lower(), "the Web UI is served"


@pytest.mark.parametrize("method,path", [
    ("POST", "/jars/upload"),  # a jar is code
    ("POST", "/jobs"),  # a job graph is code too (what `flink run` sends)
    ("PATCH", f"/jobs/{NO_SUCH_JOB}?mode=cancel"),
    ("POST", f"/jobs/{NO_SUCH_JOB}/stop"),
    ("POST", f"/jobs/{NO_SUCH_JOB}/savepoints"),
    ("DELETE", "/cluster"),  # shuts the cluster down
])
def test_writes_without_the_password_are_refused_before_flink(flink, method, path):
    r = httpx.request(method, f"{flink}{path}", timeout=10)
    assert r.status_code == 401 and r.headers.get("www-authenticate", "").startswith("Basic")
    user, _ = _operator()
    assert httpx.request(method, f"{flink}{path}", auth=(user, "wrong"), timeout=10).status_code == 401


@pytest.mark.parametrize("path", ["/jobmanager/config", "/jobmanager/environment", "/jobmanager/logs",
                                  "/jobmanager/logs/jobmanager.log", "/taskmanagers/some-tm/log",
                                  "/taskmanagers/some-tm/logs/taskmanager.log", "/jobs/" + NO_SUCH_JOB + "/config"])
def test_reads_that_show_secrets_need_the_password(flink, path):
    assert httpx.get(f"{flink}{path}", timeout=10).status_code == 401
    assert httpx.get(f"{flink}{path}", auth=_operator(), timeout=10).status_code != 401


def test_a_write_with_the_password_reaches_the_jobmanager(flink):
    r = httpx.patch(f"{flink}/jobs/{NO_SUCH_JOB}", params={"mode": "cancel"}, auth=_operator(), timeout=10)
    assert r.status_code == 404, r.text  # Flink's own answer: the proxy let it through with its certificate
    assert "errors" in r.json()


def test_the_jobmanager_endpoint_takes_only_its_certificate(flink):
    from deploy.local import flink_rest

    f = flink_rest.files()
    internal = flink_rest.rest_url()
    assert internal.startswith("https://") and str(SETTINGS.ports.flink_rest_internal) in internal
    plain = httpx.get(internal.replace("https://", "http://") + "/overview", timeout=5)
    assert plain.status_code == 301 and plain.headers["location"].startswith("https://"), "plain HTTP: a redirect only"
    assert not plain.content
    anonymous = ssl.create_default_context(cafile=str(f.cert))  # trusts the server, shows no certificate
    with pytest.raises((httpx.HTTPError, ssl.SSLError)):
        httpx.get(f"{internal}/overview", verify=anonymous, timeout=5).raise_for_status()
    from deploy.local.monitoring import ensure_certificates
    from rscf import monitoring_security as ms

    ensure_certificates()
    other = ms.client_cert(ms.FLINK)  # signed by the stack's CA, but not the Flink REST certificate
    ctx = ssl.create_default_context(cafile=str(f.cert))
    ctx.load_cert_chain(str(other.cert), str(other.key))
    with pytest.raises((httpx.HTTPError, ssl.SSLError)):
        httpx.get(f"{internal}/overview", verify=ctx, timeout=5).raise_for_status()
    assert flink_rest.get("/overview", timeout=5).status_code == 200  # RSCF's own client


def test_credentials_command_prints_what_the_proxy_takes(flink):
    out = subprocess.run([sys.executable, "-m", "cli.main", "credentials", "flink", "--json"], capture_output=True,
                         text=True, timeout=60, cwd=SETTINGS.paths.repo)
    assert out.returncode == 0, out.stderr
    import json

    conf = json.loads(out.stdout)
    assert conf["url"] == flink and conf["username"] == "operator"
    r = httpx.patch(f"{flink}/jobs/{NO_SUCH_JOB}", params={"mode": "cancel"},
                    auth=(conf["username"], conf["password"]), timeout=10)
    assert r.status_code == 404
    proxy_log = (SETTINGS.paths.logs / "flink-rest-proxy.log")
    if proxy_log.exists():
        assert conf["password"] not in proxy_log.read_text(errors="replace"), "the password is never logged"
