"""Render each pool's Kubernetes worker Deployment and KEDA ScaledObject from the pool table, and the init Job.

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
            # Its own credentials, from Secrets `python -m deploy.container_secrets k8s` creates (never committed):
            # the pool's Kafka principal, the workers' S3 key (write artifacts, read models); no Redis user.
            - name: RSCF_KAFKA_PRINCIPAL
              value: worker-{name}
            - name: RSCF_KAFKA_PASSWORD
              valueFrom: {{secretKeyRef: {{name: rscf-kafka-worker-{name}, key: password}}}}
            - name: RSCF_S3_ACCESS_KEY
              valueFrom: {{secretKeyRef: {{name: rscf-s3-worker, key: access-key}}}}
            - name: RSCF_S3_SECRET_KEY
              valueFrom: {{secretKeyRef: {{name: rscf-s3-worker, key: secret-key}}}}
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
# one pod per {period} s; inference_workers/scaling.py). KEDA reads the lag as the `controller` principal (SASL/SCRAM,
# TriggerAuthentication rscf-kafka-controller: describe only). KEDA takes the highest of the three triggers,
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
        sasl: scram_sha512
        tls: disable
      authenticationRef:
        name: rscf-kafka-controller
"""

_INIT_JOB = """\
# One-shot set-up, the only pod with the Kafka and S3 admin credentials (deploy/container_init.py): every
# component's SCRAM credential and ACLs, S3 users and policies (MinIO's admin API; `--s3-users print` prints the IAM
# policies for another S3 service), topics, buckets (and rscf-flink-state for the FlinkDeployment), schema subjects.
# Its Secrets come from `python -m deploy.container_secrets k8s` (never committed). Rerun after a change:
#   kubectl -n rscf delete job rscf-init && kubectl apply -k deploy/k8s
# Generated from rscf/pools.py and rscf/kafka_security.py by `python -m deploy.k8s_pools`: do not edit.
apiVersion: batch/v1
kind: Job
metadata:
  name: rscf-init
  labels:
    app.kubernetes.io/name: rscf-init
spec:
  backoffLimit: 20
  template:
    metadata:
      labels:
        app.kubernetes.io/name: rscf-init
    spec:
      restartPolicy: OnFailure
      containers:
        - name: init
          image: rscf:0.1.0
          imagePullPolicy: IfNotPresent
          command: ["python", "-m", "deploy.container_init", "--secrets", "/run/secrets/rscf",
                    "--s3-users", "minio", "--flink-state-bucket", "rscf-flink-state"]
          envFrom:
            - configMapRef:
                name: rscf-settings
          env:
            - name: RSCF_DATA_DIR  # its own: the SCRAM passwords it stages stay in this pod
              value: /tmp/rscf-init
            - name: RSCF_KAFKA_PRINCIPAL
              value: admin
            - name: RSCF_KAFKA_PASSWORD_FILE
              value: /run/secrets/rscf/kafka-admin
            - name: RSCF_S3_ACCESS_KEY
              valueFrom: {{secretKeyRef: {{name: rscf-s3-admin, key: access-key}}}}
            - name: RSCF_S3_SECRET_KEY_FILE
              value: /run/secrets/rscf/s3-admin
            - name: RSCF_REGISTRY_KEY_FILE  # registers the subjects; every other pod only looks them up
              value: /run/secrets/rscf/registry-signing-key
          volumeMounts:
            - {{name: secrets, mountPath: /run/secrets/rscf, readOnly: true}}
          resources:
            requests: {{cpu: "100m", memory: 256Mi}}
            limits: {{memory: 1Gi}}
      volumes:
        - name: secrets
          projected:
            sources:
{sources}"""

_INIT_SOURCE = """\
              - secret: {{name: rscf-{file}, items: [{{key: {key}, path: {file}}}]}}
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


def render_init_job() -> str:
    """The init Job: a projected volume of every principal's password and every S3 identity's key."""
    from deploy.container_secrets import REGISTRY_SIGNING_KEY, S3_IDENTITIES, kafka_name, s3_name
    from rscf.kafka_security import fixed_principals

    files = [(kafka_name(p), "password") for p in fixed_principals()] + [(s3_name(i), "secret-key") for i in S3_IDENTITIES]
    files.append((REGISTRY_SIGNING_KEY, "key.pem"))
    return _INIT_JOB.format(sources="".join(_INIT_SOURCE.format(file=f, key=k) for f, k in files))


def render_all() -> dict[str, str]:
    files = {name: text for pool in POOL_TABLE for name, text in render(pool).items()}
    return {**files, "init-job.yaml": render_init_job()}


def main() -> int:
    for name, text in render_all().items():
        (K8S / name).write_text(text, encoding="utf-8")
        print(K8S / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
