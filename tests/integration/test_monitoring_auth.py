"""Prometheus answers only with a password, the Pushgateway only to a certificate of the stack's CA, and
the metrics still arrive: Flink's (its JVM's key store) and a Python pusher's (issue #16, README
"Prometheus and Pushgateway authentication"). Starts only the services it needs if they are not up."""

from __future__ import annotations

import ssl
import time
import uuid

import httpx
import pytest

from rscf import monitoring_security as ms
from rscf.settings import SETTINGS
from tests.helpers.stack_services import services_up

SERVICES = ["zookeeper", "flink-jobmanager", "flink-taskmanager", "pushgateway", "prometheus"]


@pytest.fixture(scope="module")
def monitoring():
    services_up(SERVICES, "the monitoring services")
    return SETTINGS


def _query(q: str, auth: tuple[str, str] | None = None) -> httpx.Response:
    return httpx.get(f"{SETTINGS.prometheus_url}/api/v1/query", params={"query": q}, auth=auth, timeout=5)


def _wait_for(q: str, timeout_s: float = 60.0) -> list:
    deadline = time.monotonic() + timeout_s
    result: list = []
    while time.monotonic() < deadline:
        result = _query(q, ms.prometheus_auth()).json()["data"]["result"]
        if result:
            return result
        time.sleep(2)
    return result


def test_prometheus_refuses_requests_without_the_password(monitoring):
    assert _query("up").status_code == 401
    assert _query("up", ("admin", "wrong")).status_code == 401
    assert httpx.post(f"{SETTINGS.prometheus_url}/-/reload", timeout=5).status_code == 401
    ok = _query("up", ms.prometheus_auth())
    assert ok.status_code == 200 and ok.json()["status"] == "success"
    assert _query("up", ms.prometheus_auth("prometheus")).status_code == 200


def test_pushgateway_refuses_pushes_without_a_client_certificate(monitoring):
    url = f"{ms.pushgateway_url()}/metrics/job/rscf-intruder"
    with pytest.raises((httpx.HTTPError, ssl.SSLError)):  # the TLS handshake fails: no certificate
        httpx.put(url, content=b"intruder 1\n", verify=ssl.create_default_context(cafile=str(ms.ca_file())),
                  timeout=5)
    try:  # plain HTTP: Go's TLS server answers 400 ("an HTTP request to an HTTPS server") or resets
        plain = httpx.put(url.replace("https://", "http://"), content=b"intruder 1\n", timeout=5).status_code
    except httpx.HTTPError:
        plain = None
    assert plain in (None, 400)
    groups = httpx.get(f"{ms.pushgateway_url()}/api/v1/metrics", verify=ms.pushgateway_ssl(), timeout=5).json()
    assert not [g for g in groups["data"] if g["labels"].get("job") == "rscf-intruder"]


def test_a_certified_push_reaches_prometheus(monitoring):
    from jobs.backfill_results import push_progress

    backfill = f"authtest{uuid.uuid4().hex[:8]}"
    push_progress(backfill, total=7, finished=5, dead=1)  # presents the admin certificate
    found = _wait_for(f'rscf_backfill_rows_finished{{backfill="{backfill}"}}')
    assert found and float(found[0]["value"][1]) == 5.0
    httpx.delete(f"{ms.pushgateway_url()}/metrics/job/rscf-backfill-{backfill}", verify=ms.pushgateway_ssl(),
                 timeout=5).raise_for_status()


def test_flink_metrics_still_reach_prometheus_through_the_pushgateway(monitoring):
    """Both roles push with the ``flink`` certificate (their JVM's key store); Prometheus scrapes with its own."""
    found = _wait_for("max by (job) (flink_jobmanager_numRegisteredTaskManagers)", 60)
    assert found and float(found[0]["value"][1]) >= 1
    assert _wait_for('count(flink_taskmanager_Status_JVM_CPU_Load{job="flink-taskmanager"})', 60)
    # pushed now, not left over: each role's last successful push is under 2 intervals (15 s) + a scrape old
    for role in ("flink-jobmanager", "flink-taskmanager"):
        assert _wait_for(f'time() - push_time_seconds{{job="{role}"}} < 45', 60), role
    targets = httpx.get(f"{SETTINGS.prometheus_url}/api/v1/targets", auth=ms.prometheus_auth(),
                        timeout=5).json()["data"]["activeTargets"]
    health = {t["labels"]["job"]: t["health"] for t in targets}
    assert health.get("flink") == "up" and health.get("prometheus") == "up", health
