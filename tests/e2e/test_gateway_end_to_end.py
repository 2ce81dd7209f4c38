"""Through the gateway and back: two tenants submit under the same request id over HTTPS, the real job
(an isolated copy) and a real echo worker answer, and each tenant reads only its own final."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tools import harness

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@pytest.fixture(scope="module")
def services(request):
    """The stack answering (Kafka, registry, S3, Flink); started by the session's stack fixture only if not."""
    from deploy.local.services import SERVICE_BY_NAME

    if not all(SERVICE_BY_NAME[n].health() for n in ("kafka", "registry", "s3", "flink-jobmanager")):
        request.getfixturevalue("stack")


def test_prompts_through_the_gateway_come_back_to_their_own_tenant(services):
    from gateway.apikeys import KeyStore
    from gateway.tls import ensure_tls
    from tools.gateway_bench import start_gateway, wait_healthy

    with harness.isolated_run("gw") as r:
        for tenant in ("gwe-a", "gwe-b"):
            r.producer.control(harness.policy_event(tenant, ["echo"]))
        r.producer.flush()
        harness.serde(r.cfg, r.cfg.topic("genai.prompts"), "prompt").writer_id  # registered, as `rscf up` does
        r.job.start()
        r.worker.start()
        data = Path(tempfile.mkdtemp(prefix="gwe2e-"))
        store = KeyStore(data / "secrets")
        keys = {t: store.create(t)[1] for t in ("gwe-a", "gwe-b")}
        port = harness.free_port()
        proc = start_gateway(data, port, r.cfg.topic("genai.prompts"), content_topic=r.cfg.topic("genai.content"),
                             rate_per_s=1000)
        try:
            ca = ensure_tls(data / "secrets").ca_cert
            wait_healthy(port, ca, proc)
            url = f"https://127.0.0.1:{port}"
            for tenant, key in keys.items():
                resp = httpx.post(f"{url}/v1/prompts", verify=str(ca), headers={"Authorization": f"Bearer {key}"},
                                  json={"prompt": f"hello from {tenant}", "modality": "text", "request_id": "e2e-1"})
                assert resp.status_code == 202, resp.text
            for tenant, key in keys.items():
                deadline, final = time.monotonic() + 180, None
                while final is None and time.monotonic() < deadline:
                    got = httpx.get(f"{url}/v1/results/e2e-1?wait=20", verify=str(ca), timeout=30,
                                    headers={"Authorization": f"Bearer {key}"})
                    final = got.json() if got.status_code == 200 else None
                assert final is not None, f"no final for {tenant}"
                assert final["tenant_id"] == tenant and final["status"] == "SUCCEEDED", final
                assert final["output_text"] == f"hello from {tenant}"[::-1]
        finally:
            proc.terminate()
            proc.wait(30)
