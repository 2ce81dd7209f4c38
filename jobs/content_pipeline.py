"""The content pipeline: PyFlink DataStream job wiring (run by `rscf job start`, or `--local`).

    prompts ─▶ keyBy Kafka key (tenant_id) ─▶ TenantGate ─────────────┐ (+ control broadcast)
    results ──────────────────────────────────────────────────────────┼─▶ keyBy key (request_id)
    control ─▶ ControlIntake ─▶ broadcast ─▶ (TenantGate, Orchestrator)│   ─▶ RequestOrchestrator
                            └─▶ dead letters ──────────────────────────┘      (+ Confluent Avro encode)
    ─▶ split by topic (SQL WHERE, in Java) ─▶ requests sink (requests.<pool>; at-least-once)
                                          ├─▶ finals sink (content, audit, dlq; an identity header each:
                                          │   exactly-once by read-back after a restore, or transactional)
                                          └─▶ republish sink (prompts/results for a record that came under
                                              the wrong Kafka key; transactional in exactly-once modes)

Three Python calls per prompt and its result: the gate, and the orchestrator twice.
Prompts and results are keyed in Java by their Kafka key (producers key prompts by
tenant_id, workers key results by request_id), so no decode operator runs ahead of
a keyBy; the keyed function decodes, and a record whose key does not match its
payload is written back under the right key (`envelopes.Republish`). Dead letters and
early finals ride the same path as everything else (each function forwards what it
does not handle), so no stream fans out into filters: in thread mode every Python
operator unpickles each record it receives, and all of them take turns on one
interpreter lock.

Why these choices (measured on this machine, see jobs/README.md):
- Kafka sources and the sink are Table-API tables bridged to DataStreams: the
  table source exposes the raw Kafka key (the keyBy key, without Python) and
  topic/partition/offset metadata (dead letters say where a poison record came
  from), and the table sink writes a raw key (request_id)
  plus a raw value to a per-record topic (writable `topic` metadata). The
  DataStream KafkaSource in PyFlink only offers value-only deserializers.
- `python.execution-mode: thread`: keyed state and timers at 500 prompts/s give
  p50 8 ms / p99 21 ms end to end; process mode lagged by seconds (p50 3.8 s).
  The backfill lane, whose rows nobody waits for, runs in process mode
  (`JobConfig.python_worker`): its Python in niced worker processes, off the
  interpreter lock that the live job's operators take turns on.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script by `flink run -py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyflink.common import Configuration, Types
from pyflink.datastream import DataStream, KeyedStream, StreamExecutionEnvironment
from pyflink.java_gateway import get_gateway
from pyflink.table import StreamTableEnvironment

from jobs import flink_functions as ff
from jobs.config import JobConfig, parse, python_executable, python_path
from rscf import kafka_clients
from rscf.code_digest import GLOBAL_PARAMETER, code_digest
from rscf.settings import SETTINGS

PICKLED = Types.PICKLED_BYTE_ARRAY()
PRIMITIVE_BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
# Row(key, Row(kafka key, value, topic, partition, offset)): what a keyed Python function takes
# (key_by's own operator would emit Row(key, value)), built by SQL from a Kafka source.
RECORD = Types.ROW([Types.STRING(), PRIMITIVE_BYTES, Types.STRING(), Types.INT(), Types.LONG()])
WIRE = Types.ROW([Types.STRING(), RECORD])
KEYED_BY_KAFKA_KEY = """SELECT COALESCE(`k`, '') AS `key`, ROW(`k`, `v`, `topic`, `part`, `off`) AS `rec` FROM `{}`"""
SINK_ROW = Types.ROW_NAMED(  # h: Kafka headers, a final's identity (jobs/replay_filter.py); None otherwise
    ["topic", "k", "v", "h"], [Types.STRING(), PRIMITIVE_BYTES, PRIMITIVE_BYTES, Types.MAP(Types.STRING(), PRIMITIVE_BYTES)]
)


# Process mode's bundles (cfg.python_worker): a checkpoint barrier waits for what the Python worker holds.
PROCESS_BUNDLE_SIZE, PROCESS_BUNDLE_MS = 100, 100
# The longest a record waits in a network buffer between two operators (gate -> orchestrator): 5 ms -> 2 ms took
# the echo path's p99 at 500/s from 62-64 to 41-48 ms with the same ceiling at 3,000/s offered (2,624-2,669/s);
# 1 ms: p99 44-45 ms but 5 % less throughput (jobs/README.md, "The echo path on 2026-12-06").
BUFFER_TIMEOUT_MS = 2


def flink_configuration(cfg: JobConfig) -> Configuration:
    """What the job needs whatever the cluster's config.yaml says."""
    conf = Configuration()
    checkpoints = SETTINGS.paths.data / "flink" / "checkpoints"
    values = {
        "python.execution-mode": "thread",
        "python.executable": python_executable(),
        "python.client.executable": python_executable(),
        "python.pythonpath": python_path(),
        "execution.buffer-timeout.interval": f"{BUFFER_TIMEOUT_MS}ms",
        "pipeline.name": cfg.job_name,
        "pipeline.global-job-parameters": f"{GLOBAL_PARAMETER}:{code_digest()}",  # `rscf job status`: stale code?
        # Exactly-once (read-back, the default): finals are written at once; a checkpoint (1 s) commits only
        # republished records and bounds what a restore replays. Transactional: each checkpoint commits the
        # finals written before it, so a final waits for the next one (200 ms: +150-200 ms at p50, +280-660 ms
        # at p99). jobs/README.md "Delivery".
        "execution.checkpointing.interval": f"{cfg.checkpoint_interval_ms}ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.dir": f"file://{checkpoints}",
        "state.backend.type": "hashmap",
        # A failure the job cannot get past made a fixed 2 s delay restart it 19 times in 40 s (issue #13).
        # Backing off 1, 1.5, 2.3 ... 10 s keeps a restart loop to one attempt per 10 s, and a short
        # outage cheap: a TaskManager kill under load took 5 restarts while it came back, i.e. 31 s of
        # pure back-off with a x2 multiplier and a 60 s cap (first final 54 s after the kill), 13 s now.
        # 10 minutes without a failure count as recovered. No attempt budget: a job that gave up would
        # need a person; the RscfFlinkJobRestartLoop alert calls one.
        "restart-strategy.type": "exponential-delay",
        "restart-strategy.exponential-delay.initial-backoff": "1 s",
        "restart-strategy.exponential-delay.max-backoff": "10 s",
        "restart-strategy.exponential-delay.backoff-multiplier": "1.5",
        "restart-strategy.exponential-delay.reset-backoff-threshold": "10 min",
        "restart-strategy.exponential-delay.jitter-factor": "0.1",
    }
    if cfg.python_worker:  # the backfill lane: latency does not matter, the live job's lock and cores do
        values |= {"python.execution-mode": "process", "python.executable": cfg.python_worker,
                   "python.fn-execution.bundle.size": str(PROCESS_BUNDLE_SIZE),
                   "python.fn-execution.bundle.time": str(PROCESS_BUNDLE_MS)}
    for key, value in values.items():
        conf.set_string(key, value)
    return conf


def security_options(principal: str = kafka_clients.JOB) -> str:
    """The connector's SASL options (rscf/kafka_clients.flink_security) as WITH lines; '' without auth."""
    return "".join(f",\n  '{k}' = '{v.replace(chr(39), chr(39) * 2)}'"
                   for k, v in kafka_clients.flink_security(principal).items())


def _source_ddl(name: str, topic: str, cfg: JobConfig, startup: str) -> str:
    return f"""
CREATE TABLE `{name}` (
  `k` STRING,
  `v` BYTES,
  `topic` STRING METADATA VIRTUAL,
  `part` INT METADATA FROM 'partition' VIRTUAL,
  `off` BIGINT METADATA FROM 'offset' VIRTUAL
) WITH (
  'connector' = 'kafka',
  'topic' = '{topic}',
  'properties.bootstrap.servers' = '{cfg.bootstrap}',
  'properties.group.id' = '{cfg.group_id}',
  'properties.auto.offset.reset' = 'earliest',
  'properties.isolation.level' = 'read_committed',
  'scan.startup.mode' = '{startup}',
  'scan.topic-partition-discovery.interval' = '30 s',
  'key.format' = 'raw',
  'key.fields' = 'k',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY'{security_options()}
)"""


REQUESTS_SINK = "requests_out"
FINALS_SINK = "finals_out"
REPUBLISH_SINK = "republish_out"
HEADERS_COLUMN = ",\n  `h` MAP<STRING, BYTES> METADATA FROM 'headers'"
REPUBLISH_TRANSACTIONS = "-republish"  # its transactional ids: the job's prefix + this (the finals sink's stay the job's)
ORCHESTRATOR_OUTPUT = "orchestrator_out"


def sink_ddl(name: str, topics: list[str], cfg: JobConfig, transactional: bool, topic_column: bool = True,
             headers: bool = False, id_suffix: str = "") -> str:
    """A Kafka table sink writing raw key + value to the per-record `topic` (one of `topics`); one topic
    and `topic_column=False`: no `topic` column (the connector makes it writable only for a topic list).
    `headers`: an `h` column of Kafka headers; `id_suffix`: after the job's transactional-id prefix."""
    extra = ",\n  'properties.enable.idempotence' = 'true'"  # no duplicate from the producer's own retries
    if transactional:
        # A stable prefix per job, so a restored job aborts its predecessor's open transactions; Flink's
        # default transaction timeout (1 h) is above the broker's 15 min maximum: measured failure.
        # POOLING reuses a few transactional ids per subtask (needs Kafka >= 3.0). The connector's default,
        # INCREMENTING, opens a new id per checkpoint, which the broker remembers for
        # transactional.id.expiration.ms (7 days): ~3 million ids a week at one checkpoint every 200 ms.
        extra += (f",\n  'sink.transactional-id-prefix' = '{cfg.transactional_id_prefix}{id_suffix}'"
                 ",\n  'properties.transaction.timeout.ms' = '600000'"
                 ",\n  'sink.transaction-naming-strategy' = 'POOLING'")
    return f"""
CREATE TABLE `{name}` (
  {"`topic` STRING METADATA," if topic_column else ""}
  `k` BYTES,
  `v` BYTES{HEADERS_COLUMN if headers else ""}
) WITH (
  'connector' = 'kafka',
  'topic' = '{";".join(topics)}',
  'properties.bootstrap.servers' = '{cfg.bootstrap}',
  'properties.linger.ms' = '{SETTINGS.limits.producer_linger_ms}',
  'key.format' = 'raw',
  'key.fields' = 'k',
  'value.format' = 'raw',
  'value.fields-include' = 'EXCEPT_KEY',
  'sink.delivery-guarantee' = '{"exactly-once" if transactional else "at-least-once"}'{extra}{security_options()}
)"""


def _sql_list(values: list[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def sink_split(cfg: JobConfig) -> dict[str, tuple[str, str]]:
    """Each sink's DDL and the INSERT that feeds it from the orchestrator's output, split by topic.

    Requests to the workers go to an at-least-once sink in every mode: a request written twice after a
    restore is a duplicate model call at worst (answered from the worker's cache, dropped by request id
    in the job), while making it transactional would hold every request back until the next checkpoint
    (measured: p50 8.0 s with both hops on 5 s checkpoints). Finals (content, audit, dead letters) carry
    their identity header: at-least-once and read back after a restore (exactly-once), or transactional.
    Records republished under their right Kafka key: transactional in both exactly-once modes.
    The split is a SQL WHERE over the `topic` column: it runs in Java, chained to the orchestrator.
    """
    def insert(sink: str, topics: list[str], columns: str = "`topic`, `k`, `v`") -> str:
        return f"INSERT INTO `{sink}` SELECT {columns} FROM `{ORCHESTRATOR_OUTPUT}` WHERE `topic` IN ({_sql_list(topics)})"

    requests, finals, republish = cfg.request_topics(), cfg.final_topics(), cfg.republish_topics()
    return {
        REQUESTS_SINK: (sink_ddl(REQUESTS_SINK, requests, cfg, transactional=False), insert(REQUESTS_SINK, requests)),
        FINALS_SINK: (sink_ddl(FINALS_SINK, finals, cfg, transactional=cfg.transactional, headers=True),
                      insert(FINALS_SINK, finals, "`topic`, `k`, `v`, `h`")),
        REPUBLISH_SINK: (sink_ddl(REPUBLISH_SINK, republish, cfg, transactional=cfg.exactly_once,
                                  id_suffix=REPUBLISH_TRANSACTIONS), insert(REPUBLISH_SINK, republish)),
    }


def keyed_stream(stream: DataStream) -> KeyedStream:
    """Key a stream of Row(key, value) by its first field, in Java only.

    `DataStream.key_by` adds one more Python operator per record (it unpickles the
    value, calls the key selector and pickles it again). Here the rows already carry
    their key (from SQL over the Kafka key, or emitted by the upstream function:
    `ff.wire`), and only the Java keyBy remains, exactly as `key_by` builds it
    (pyflink/datastream/data_stream.py).
    """
    j_keyed = stream._j_data_stream.keyBy(get_gateway().jvm.KeyByKeySelector(),
                                           Types.ROW([Types.STRING()]).get_java_type_info())
    return KeyedStream(j_keyed, RECORD, stream)  # what the keyed functions receive


def build(env: StreamExecutionEnvironment, cfg: JobConfig) -> StreamTableEnvironment:
    """Wire the job into `env`; the caller executes it."""
    t_env = StreamTableEnvironment.create(env)
    # Prompts and results resume from committed offsets on a fresh start (state restores its own);
    # control events are a changelog of policies and rollouts: replay all of them on a fresh start.
    t_env.execute_sql(_source_ddl("prompts_src", cfg.prompts, cfg, "group-offsets"))
    t_env.execute_sql(_source_ddl("results_src", cfg.results, cfg, "group-offsets"))
    t_env.execute_sql(_source_ddl("control_src", cfg.control, cfg, "earliest-offset"))
    sinks = sink_split(cfg)
    for ddl, _ in sinks.values():
        t_env.execute_sql(ddl)

    def by_kafka_key(table: str) -> DataStream:
        stream = t_env.to_data_stream(t_env.sql_query(KEYED_BY_KAFKA_KEY.format(table)))
        # The same Row objects, declared with a RowTypeInfo: PyFlink's keyed operators require one
        # (they read the key's type from it), where the Table bridge declares an ExternalTypeInfo.
        stream._j_data_stream.getTransformation().setOutputType(WIRE.get_java_type_info())
        return stream

    # Prompts (keyed by tenant_id) and results (keyed by request_id) reach their keyed
    # function without a Python operator in front: the Kafka key is the key.
    prompts = by_kafka_key("prompts_src")
    results = by_kafka_key("results_src")
    control = (t_env.to_data_stream(t_env.sql_query("SELECT `v`, `topic`, `part`, `off` FROM `control_src`"))
               .flat_map(ff.ControlIntake(cfg), output_type=PICKLED).uid("control-intake").name("decode control"))
    control_events = control.filter(ff.is_next).map(ff.payload, output_type=PICKLED).set_parallelism(1)
    control_dead_letters = control.filter(ff.is_sink).map(ff.wired_dead_letter, output_type=WIRE)
    broadcast = control_events.broadcast(ff.control_descriptor())

    # Linear paths, no fan-out: each function forwards what it does not handle (a filter per kind would be
    # one more Python operator unpickling every record it sees, measured in jobs/README.md).
    gated = (
        keyed_stream(prompts)
        .connect(broadcast)
        .process(ff.TenantGate(cfg), output_type=WIRE)
        .uid("tenant-gate").name("decode+validate+moderate+admit+enrich (by tenant)")
    )
    to_sink = (
        keyed_stream(gated.union(results, control_dead_letters))
        .connect(broadcast)
        .process(ff.RequestOrchestrator(cfg), output_type=SINK_ROW)
        .uid("orchestrator").name("decode results+route+correlate+finalize+encode (by request)")
    )
    t_env.create_temporary_view(ORCHESTRATOR_OUTPUT, t_env.from_data_stream(to_sink))
    statements = t_env.create_statement_set()
    for _, insert in sinks.values():
        statements.add_insert_sql(insert)
    statements.attach_as_datastream()
    return t_env


def main(argv: list[str] | None = None) -> None:
    cfg = parse(argv if argv is not None else sys.argv[1:])
    env = StreamExecutionEnvironment.get_execution_environment(flink_configuration(cfg))
    env.set_parallelism(cfg.parallelism)
    if cfg.local:
        jar = cfg.connector_jar or str(_default_connector_jar())
        env.add_jars(f"file://{jar}")
    build(env, cfg)
    env.execute(cfg.job_name)


def _default_connector_jar() -> Path:
    return SETTINGS.paths.connector_jar


if __name__ == "__main__":
    main()
