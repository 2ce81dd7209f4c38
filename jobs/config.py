"""What one run of the content pipeline job reads, writes and promises, as plain data.

The same `JobConfig` is built by `rscf job start` (turned into `flink run`
arguments) and by the job script (parsed back), so the CLI and the job cannot
disagree about topic names. A `topic_suffix` gives a whole isolated set of
topics (`genai.prompts.<suffix>`, `genai.inference.requests.echo.<suffix>`, ...)
for tests and benchmarks that share the Kafka broker with other users.
"""

from __future__ import annotations

import argparse
import site
import sys
from dataclasses import dataclass
from pathlib import Path

from rscf.pools import POOLS
from rscf.settings import SETTINGS

JOB_NAME = "rscf-content-pipeline"
JOB_VERSION = "content-pipeline/1"

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
    redis_url: str = SETTINGS.redis_url
    parallelism: int = 1
    exactly_once: bool = False
    checkpoint_interval_ms: int = SETTINGS.limits.checkpoint_interval_ms
    local: bool = False  # run in a MiniCluster in this process (python jobs/content_pipeline.py --local)
    connector_jar: str = ""  # only needed in local mode; the cluster has it in lib/
    use_redis: bool = True  # templates, RAG index; off for runs without Redis

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

    def requests(self, pool: str) -> str:
        return self.topic(SETTINGS.topics.requests(pool))

    def output_topics(self) -> list[str]:
        return [*(self.requests(p) for p in POOLS), self.content, self.audit, self.dlq]

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
                "--redis-url", self.redis_url, "--checkpoint-interval-ms", str(self.checkpoint_interval_ms)]
        if self.topic_suffix:
            args += ["--topic-suffix", self.topic_suffix]
        if self.exactly_once:
            args.append("--exactly-once")
        if self.local:
            args.append("--local")
        if self.connector_jar:
            args += ["--connector-jar", self.connector_jar]
        if not self.use_redis:
            args.append("--no-redis")
        return args


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = JobConfig()
    p.add_argument("--job-name", default=d.job_name)
    p.add_argument("--topic-suffix", default="", help="isolated topic set <topic>.<suffix> (tests, benchmarks)")
    p.add_argument("--parallelism", "-p", type=int, default=d.parallelism)
    p.add_argument("--bootstrap", default=d.bootstrap)
    p.add_argument("--registry-url", default=d.registry_url)
    p.add_argument("--redis-url", default=d.redis_url)
    p.add_argument("--checkpoint-interval-ms", type=int, default=d.checkpoint_interval_ms)
    p.add_argument("--exactly-once", action="store_true", help="transactional Kafka sinks (read_committed readers)")
    p.add_argument("--local", action="store_true", help="run in a local MiniCluster instead of submitting")
    p.add_argument("--connector-jar", default="")
    p.add_argument("--no-redis", action="store_true", help="no template store and no RAG index")


def from_args(ns: argparse.Namespace) -> JobConfig:
    return JobConfig(
        job_name=ns.job_name, topic_suffix=ns.topic_suffix, bootstrap=ns.bootstrap,
        registry_url=ns.registry_url, redis_url=ns.redis_url, parallelism=ns.parallelism,
        exactly_once=ns.exactly_once, checkpoint_interval_ms=ns.checkpoint_interval_ms,
        local=ns.local, connector_jar=ns.connector_jar, use_redis=not ns.no_redis,
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
