"""Render each pool's Kubernetes worker Deployment and KEDA ScaledObject from the pool table.

The committed files under deploy/k8s/ are this module's output (a unit test compares them), so a
pool is named once, in rscf/pools.py. Rebuild after changing the table:

    python -m deploy.k8s_pools
"""

from __future__ import annotations

import sys
from pathlib import Path

from inference_workers.metrics import metrics_port
from rscf.pools import POOL_TABLE, Pool
from rscf.settings import SETTINGS

K8S = Path(__file__).resolve().parent / "k8s"

_DEPLOYMENT = """\
# Inference worker pool `{name}`: `rscf worker run --pool {name}` (inference_workers/worker.py).
# One replica per pod; KEDA (keda-scaledobject-{name}.yaml) sets the replica count from consumer lag.
# Shutdown: SIGTERM makes the worker finish the batch in hand, produce, commit and leave the group;
# terminationGracePeriodSeconds must exceed the slowest batch. Health/metrics on {port}
# (SETTINGS.ports.worker_metrics_first + pool index): /healthz liveness, /readyz readiness
# (model loaded and partitions assigned), /metrics for Prometheus.
# Generated from rscf/pools.py by `python -m deploy.k8s_pools`: edit the pool table, not this file.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: rscf-worker-{name}
  labels:
    app.kubernetes.io/name: rscf-worker
    app.kubernetes.io/component: worker
    rscf.io/pool: {name}
spec:
  replicas: 1
  selector:
    matchLabels:
      app.kubernetes.io/name: rscf-worker
      rscf.io/pool: {name}
  strategy:
    rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata:
      labels:
        app.kubernetes.io/name: rscf-worker
        app.kubernetes.io/component: worker
        rscf.io/pool: {name}
      annotations:
        prometheus.io/scrape: "true"
        prometheus.io/port: "{port}"
        prometheus.io/path: /metrics
    spec:
      terminationGracePeriodSeconds: {grace}
      containers:
        - name: worker
          image: rscf:0.1.0
          imagePullPolicy: IfNotPresent
          command: ["rscf", "worker", "run", "--pool", "{name}"]
          envFrom:
            - configMapRef:
                name: rscf-settings
          env:
            - name: HF_HUB_OFFLINE
              value: "1"
            - name: RSCF_S3_SECRET_KEY  # Secret rscf-s3, created from the generated key (never committed)
              valueFrom: {{secretKeyRef: {{name: rscf-s3, key: secret-key}}}}
          ports:
            - name: metrics
              containerPort: {port}
          startupProbe:
            httpGet: {{path: /healthz, port: metrics}}
            periodSeconds: 5
            failureThreshold: 60
          livenessProbe:
            httpGet: {{path: /healthz, port: metrics}}
            periodSeconds: 10
          readinessProbe:
            httpGet: {{path: /readyz, port: metrics}}
            periodSeconds: 5
          resources:
            requests: {{{requests}}}
            limits: {{{limits}}}
"""

_SCALED_OBJECT = """\
# KEDA scales rscf-worker-{name} on the consumer lag of its priority lanes (groups rscf-workers-{name}
# .high / plain / .low): the same numbers as the local pool controller (rscf/pools.py row `{name}`:
# lagThreshold {lag}, activation {activation}, cooldown {cooldown} s, scale-down stabilisation {window} s,
# one pod per {period} s; inference_workers/scaling.py). KEDA takes the highest of the three triggers,
# the local controller their sum. Workers commit only after their results are acknowledged, so lag
# counts queued and in-flight requests alike. Replicas beyond the topic's partition count would idle,
# so KEDA caps there (allowIdleConsumers false), as the local controller does.
# Generated from rscf/pools.py by `python -m deploy.k8s_pools`: edit the pool table, not this file.
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
  name: rscf-worker-{name}
  labels:
    app.kubernetes.io/name: rscf-worker
    rscf.io/pool: {name}
spec:
  scaleTargetRef:
    name: rscf-worker-{name}
  pollingInterval: 10
  cooldownPeriod: {cooldown}
  minReplicaCount: {min_replicas}
  maxReplicaCount: {max_replicas}
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleUp:
          stabilizationWindowSeconds: 0
          policies:
            - {{type: Pods, value: {max_replicas}, periodSeconds: 10}}  # straight to the wish
        scaleDown:
          stabilizationWindowSeconds: {window}
          policies:
            - {{type: Pods, value: 1, periodSeconds: {period}}}
  triggers:
{triggers}"""

_TRIGGER = """\
    - type: kafka
      metadata:
        bootstrapServers: kafka:9092
        consumerGroup: {group}
        topic: {topic}
        lagThreshold: "{lag}"
        activationLagThreshold: "{activation}"
        offsetResetPolicy: earliest
        allowIdleConsumers: "false"
        scaleToZeroOnInvalidOffset: "false"
"""


def render(pool: Pool) -> dict[str, str]:
    """File name -> text of the pool's Deployment and ScaledObject."""
    gpu = ', nvidia.com/gpu: "1"' if pool.gpu else ""
    topics = SETTINGS.topics
    triggers = "".join(_TRIGGER.format(group=g, topic=t, lag=pool.lag_threshold, activation=pool.activation_lag)
                       for t, g in zip(topics.lanes(topics.requests(pool.name)), topics.lanes(f"rscf-workers-{pool.name}")))
    fields = dict(
        name=pool.name, port=metrics_port(pool.name), grace=pool.grace_s, lag=pool.lag_threshold,
        activation=pool.activation_lag, cooldown=pool.cooldown_s, window=pool.stabilization_s,
        period=pool.scale_down_period_s, triggers=triggers,
        requests=f'cpu: "{pool.cpu_request}", memory: {pool.memory_request}{gpu}',
        limits=f"memory: {pool.memory_limit}{gpu}",
        min_replicas=pool.min_replicas, max_replicas=pool.max_replicas, topic=SETTINGS.topics.requests(pool.name),
    )
    return {f"worker-{pool.name}.yaml": _DEPLOYMENT.format(**fields),
            f"keda-scaledobject-{pool.name}.yaml": _SCALED_OBJECT.format(**fields)}


def render_all() -> dict[str, str]:
    return {name: text for pool in POOL_TABLE for name, text in render(pool).items()}


def main() -> int:
    for name, text in render_all().items():
        (K8S / name).write_text(text, encoding="utf-8")
        print(K8S / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
