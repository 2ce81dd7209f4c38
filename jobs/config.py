"""What one run of the content pipeline job reads, writes and promises, as plain data.

The same `JobConfig` is built by `rscf job start` (turned into `flink run`
arguments) and by the job script (parsed back), so the CLI and the job cannot
disagree about topic names. A `topic_suffix` gives a whole isolated set of
topics (`genai.prompts.<suffix>`, `genai.inference.requests.echo.<suffix>`, ...)
for tests and benchmarks that share the Kafka broker with other users.
"""

from __future__ import annotations

import argparse
import dataclasses
import site
import sys
from dataclasses import dataclass
from pathlib import Path

from rscf.pools import POOLS
from rscf.settings import SETTINGS, Limits

JOB_NAME = "rscf-content-pipeline"
JOB_VERSION = "content-pipeline/1"

# Delivery modes of the job's Kafka output (jobs/README.md, "Delivery"):
# exactly-once (the default): a read_committed reader sees each final (content, audit, dead letter)
#   exactly once through a restore. Finals are written at once, at-least-once, and a restored job drops
#   what it writes a second time by reading back what the topics already hold (`jobs.replay_filter`); a
#   record republished under its right Kafka key goes through a transaction per checkpoint.
# transactional: the same promise the way Flink's Kafka sink keeps it: every final in a transaction per
#   checkpoint, so it waits for the next checkpoint (+150-650 ms at p99 at 200 ms checkpoints).
# at-least-once: no read-back, no transactions; after a restore a reader may see a final twice.
# In every mode requests to the workers are at-least-once (a re-dispatch after a restore is a duplicate
# request, answered from the worker's cache and dropped by request id in the job).
EXACTLY_ONCE = "exactly-once"
TRANSACTIONAL = "transactional"
AT_LEAST_ONCE = "at-least-once"
DELIVERY_MODES = (EXACTLY_ONCE, TRANSACTIONAL, AT_LEAST_ONCE)
# Checkpoint interval by mode, unless given: in transactional mode each checkpoint commits the finals,
# so a final waits for the next one (SETTINGS.limits.checkpoint_interval_ms, chosen by measurement in
# jobs/README.md); otherwise a checkpoint commits only republished records (exactly-once), or nothing, and
# bounds what is replayed after a restore.
AT_LEAST_ONCE_CHECKPOINT_INTERVAL_MS = 5_000
READ_BACK_CHECKPOINT_INTERVAL_MS = 1_000


def default_checkpoint_interval_ms(delivery: str) -> int:
    return {TRANSACTIONAL: SETTINGS.limits.checkpoint_interval_ms,
            EXACTLY_ONCE: READ_BACK_CHECKPOINT_INTERVAL_MS}.get(delivery, AT_LEAST_ONCE_CHECKPOINT_INTERVAL_MS)

# Record type (schema name) of each output role; request topics all carry InferenceRequest.
ROLE_SCHEMAS = {
    "content": "content_result",
    "audit": "audit_record",
    "dlq": "dead_letter",
    "request": "inference_request",
    "prompt": "prompt_request",
    "result": "inference_result",
    "control": "control_event",
}


@dataclass(frozen=True)
class JobConfig:
    job_name: str = JOB_NAME
    topic_suffix: str = ""
    bootstrap: str = SETTINGS.kafka_bootstrap
    registry_url: str = SETTINGS.registry_url
    redis_url: str = ""  # "": the stack's Redis as the `job` ACL user (`job_redis_url`)
    parallelism: int = 1
    delivery: str = EXACTLY_ONCE
    checkpoint_interval_ms: int = 0  # 0: the delivery mode's default (default_checkpoint_interval_ms)
    local: bool = False  # run in a MiniCluster in this process (python jobs/content_pipeline.py --local)
    connector_jar: str = ""  # only needed in local mode; the cluster has it in lib/
    use_redis: bool = True  # templates, RAG index; off for runs without Redis
    # an attempt's deadline; 0: SETTINGS.limits.request_timeout_ms (the backfill lane's is its own: backfills.py)
    request_timeout_ms: int = 0
    admit_by_created_at: bool = False  # quota by the rows' read time: the backfill lane's (jobs/gate.py)
    # "": thread mode, the job's Python inside the TaskManager (the live job: p99 21 ms where process mode
    # lagged by seconds). A path: process mode, the Python in worker processes started by that interpreter
    # (the backfill lane's niced wrapper: its Python off the live job's interpreter lock and cores)
    python_worker: str = ""

    def __post_init__(self) -> None:
        if self.delivery not in DELIVERY_MODES:
            raise ValueError(f"delivery must be one of {DELIVERY_MODES}, not {self.delivery!r}")
        if self.checkpoint_interval_ms <= 0:
            object.__setattr__(self, "checkpoint_interval_ms", default_checkpoint_interval_ms(self.delivery))

    def limits(self) -> Limits:
        """The stack's limits with this job's attempt deadline."""
        if self.request_timeout_ms <= 0:
            return SETTINGS.limits
        return dataclasses.replace(SETTINGS.limits, request_timeout_ms=self.request_timeout_ms)

    def topic(self, base: str) -> str:
        return f"{base}.{self.topic_suffix}" if self.topic_suffix else base

    @property
    def prompts(self) -> str:
        return self.topic(SETTINGS.topics.prompts)

    @property
    def results(self) -> str:
        return self.topic(SETTINGS.topics.results)

    @property
    def control(self) -> str:
        return self.topic(SETTINGS.topics.control)

    @property
    def content(self) -> str:
        return self.topic(SETTINGS.topics.content)

    @property
    def audit(self) -> str:
        return self.topic(SETTINGS.topics.audit)

    @property
    def dlq(self) -> str:
        return self.topic(SETTINGS.topics.dlq)

    def requests(self, pool: str, priority: str | None = None) -> str:
        """The pool's request topic of a priority lane (the lane's suffix goes after the test suffix)."""
        return SETTINGS.topics.lane(self.topic(SETTINGS.topics.requests(pool)), priority)

    def output_topics(self) -> list[str]:
        return [*self.request_topics(), self.content, self.audit, self.dlq]

    def request_topics(self) -> list[str]:
        """What the requests sink writes (at-least-once in every mode)."""
        return [t for p in POOLS for t in SETTINGS.topics.lanes(self.requests(p))]

    def final_topics(self) -> list[str]:
        """What the finals sink writes (transactional in transactional mode, read back in exactly-once)."""
        return [self.content, self.audit, self.dlq]

    def republish_topics(self) -> list[str]:
        """Where a record read under the wrong Kafka key goes back under its right one (transactional in
        both exactly-once modes: read twice, it would be a second prompt or result)."""
        return [self.prompts, self.results]

    @property
    def exactly_once(self) -> bool:
        """Whether a read_committed reader sees each final once through a restore (either mechanism)."""
        return self.delivery in (EXACTLY_ONCE, TRANSACTIONAL)

    @property
    def transactional(self) -> bool:
        return self.delivery == TRANSACTIONAL

    def all_topics(self) -> list[str]:
        return [self.prompts, self.results, self.control, *self.output_topics()]

    @property
    def group_id(self) -> str:
        return f"{self.job_name}-{self.topic_suffix}" if self.topic_suffix else self.job_name

    @property
    def transactional_id_prefix(self) -> str:
        """Stable across restarts of the same job (Flink aborts its lingering transactions by prefix)."""
        return self.group_id

    def to_args(self) -> list[str]:
        args = ["--job-name", self.job_name, "--parallelism", str(self.parallelism),
                "--bootstrap", self.bootstrap, "--registry-url", self.registry_url,
                "--checkpoint-interval-ms", str(self.checkpoint_interval_ms)]
        if self.redis_url:  # else the TaskManager finds the job user's credentials itself (`job_redis_url`)
            args += ["--redis-url", self.redis_url]
        if self.topic_suffix:
            args += ["--topic-suffix", self.topic_suffix]
        args += ["--delivery", self.delivery]
        if self.local:
            args.append("--local")
        if self.connector_jar:
            args += ["--connector-jar", self.connector_jar]
        if not self.use_redis:
            args.append("--no-redis")
        if self.request_timeout_ms > 0:
            args += ["--request-timeout-ms", str(self.request_timeout_ms)]
        if self.admit_by_created_at:
            args.append("--admit-by-created-at")
        if self.python_worker:
            args += ["--python-worker", self.python_worker]
        return args


def job_redis_url(cfg: JobConfig) -> str:
    """The job's Redis URL: as given (with the `job` user's credentials when it carries none), else the
    stack's Redis with them. Resolved where the job runs (the TaskManager: its data dir's secret, or
    RSCF_REDIS_USER + RSCF_REDIS_PASSWORD_FILE in a container; README "Redis users and ACLs"), not at
    submission: Flink's client logs the job's arguments (`.data/logs/flink--client-*.log`)."""
    from rscf import redis_security

    return redis_security.with_user(cfg.redis_url, redis_security.JOB) if cfg.redis_url else \
        redis_security.url(redis_security.JOB)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = JobConfig()
    p.add_argument("--job-name", default=d.job_name)
    p.add_argument("--topic-suffix", default="", help="isolated topic set <topic>.<suffix> (tests, benchmarks)")
    p.add_argument("--parallelism", "-p", type=int, default=d.parallelism)
    p.add_argument("--bootstrap", default=d.bootstrap)
    p.add_argument("--registry-url", default=d.registry_url)
    p.add_argument("--redis-url", default=d.redis_url, help="default: the stack's Redis as the job user")
    p.add_argument("--checkpoint-interval-ms", type=int, default=0, help="default: by delivery mode")
    add_delivery_arguments(p)
    p.add_argument("--local", action="store_true", help="run in a local MiniCluster instead of submitting")
    p.add_argument("--connector-jar", default="")
    p.add_argument("--no-redis", action="store_true", help="no template store and no RAG index")
    p.add_argument("--request-timeout-ms", type=int, default=0, help="an attempt's deadline (default: the stack's)")
    p.add_argument("--admit-by-created-at", action="store_true",
                   help="tenant quotas count prompts by their created_at (a backfill lane; never a live job)")
    p.add_argument("--python-worker", default="",
                   help="process mode: the job's Python in worker processes run by this interpreter (default: "
                        "thread mode, inside the TaskManager)")


def add_delivery_arguments(p: argparse.ArgumentParser) -> None:
    """`--delivery MODE`, and `--exactly-once`, kept for scripts that pass it: the default now."""
    p.add_argument("--delivery", choices=DELIVERY_MODES, default=EXACTLY_ONCE,
                   help="exactly-once (default): one final per prompt for read_committed readers, written at "
                        "once, a restored job's replays dropped by read-back; transactional: the same promise, "
                        "each final committed with the next checkpoint; at-least-once: a final may repeat after a "
                        "restore")
    p.add_argument("--exactly-once", dest="delivery", action="store_const", const=EXACTLY_ONCE,
                   help="same as --delivery exactly-once (the default)")


def from_args(ns: argparse.Namespace) -> JobConfig:
    return JobConfig(
        job_name=ns.job_name, topic_suffix=ns.topic_suffix, bootstrap=ns.bootstrap,
        registry_url=ns.registry_url, redis_url=ns.redis_url, parallelism=ns.parallelism,
        delivery=ns.delivery, checkpoint_interval_ms=ns.checkpoint_interval_ms,
        local=ns.local, connector_jar=ns.connector_jar, use_redis=not ns.no_redis,
        request_timeout_ms=ns.request_timeout_ms, admit_by_created_at=ns.admit_by_created_at,
        python_worker=ns.python_worker,
    )


def parse(argv: list[str] | None = None) -> JobConfig:
    p = argparse.ArgumentParser(prog="content_pipeline")
    add_arguments(p)
    ns, _ = p.parse_known_args(argv)
    return from_args(ns)


def python_path() -> str:
    """`python.pythonpath` for the job: the venv's site-packages and the repo root.

    Thread mode embeds the base interpreter (pemja), which does not see the venv,
    and PYTHONPATH entries are not site dirs, so the editable install's .pth is not
    read either: both must be named explicitly (measured: "No module named 'pemja'").
    """
    paths = [p for p in site.getsitepackages() if Path(p).is_dir()]
    return ":".join([*paths, str(SETTINGS.paths.repo)])


def python_executable() -> str:
    return sys.executable
