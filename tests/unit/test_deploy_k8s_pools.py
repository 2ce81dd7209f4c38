"""The committed worker manifests are what the pool table renders: a pool is named once."""

from __future__ import annotations

import yaml

from deploy.k8s_pools import K8S, render, render_all
from rscf.settings import SETTINGS
from rscf.pools import POOL_TABLE, POOLS, pool


def test_committed_manifests_match_the_pool_table():
    stale = [name for name, text in render_all().items() if (K8S / name).read_text(encoding="utf-8") != text]
    assert not stale, f"regenerate with `python -m deploy.k8s_pools`: {stale}"


def test_every_pool_is_deployed_and_scaled():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for name in POOLS:
        assert f"worker-{name}.yaml" in kustomization["resources"]
        assert f"keda-scaledobject-{name}.yaml" in kustomization["resources"]


def test_rendered_values_follow_the_table():
    for row in POOL_TABLE:
        files = render(row)
        deployment = yaml.safe_load(files[f"worker-{row.name}.yaml"])
        scaled = yaml.safe_load(files[f"keda-scaledobject-{row.name}.yaml"])
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["rscf", "worker", "run", "--pool", row.name]
        assert ("nvidia.com/gpu" in container["resources"]["limits"]) is row.gpu
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == row.grace_s
        assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (row.min_replicas, row.max_replicas)
        lanes = SETTINGS.topics.lanes(SETTINGS.topics.requests(row.name))
        assert [t["metadata"]["topic"] for t in scaled["spec"]["triggers"]] == list(lanes)  # every priority lane
        assert {t["metadata"]["lagThreshold"] for t in scaled["spec"]["triggers"]} == {str(row.lag_threshold)}
        assert scaled["spec"]["cooldownPeriod"] == row.cooldown_s  # the local controller's numbers
    assert pool("image").gpu and not pool("echo").gpu
