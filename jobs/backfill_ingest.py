"""The backfill's bounded Flink job: rows of object-storage files -> prompts on the backfill lane.

    JSON Lines: Flink's file source (filesystem table, `raw` lines + `file.path`) over s3:// through the
                S3 filesystem plugin ─▶ keyBy file ─▶ BackfillRows (row number = lines of that file so far)
    Parquet/Avro: NumberSequenceSource over the plan's read units (file, row group) ─▶ (chained)
                ReadUnits (pyarrow / fastavro through the S3 client; each unit is emitted in one call)
    ─▶ prompt (operators.backfill.to_prompt: the prompt contract, a request id from backfill+file+row,
       validated by the live path's validate_prompt) or bad row
    ─▶ split by kind (SQL WHERE, in Java) ─▶ Kafka sink `genai.prompts.<lane>` keyed by tenant
                                              (transactional: committed with each checkpoint)
                                         └─▶ dead-letter files `<prefix>/_results/dead-letters/` (JSON
                                              lines: file, row, reason, detail, excerpt; committed with
                                              each checkpoint)

The job ends when every row is read (bounded); stopping it with a savepoint and starting it from the
savepoint resumes at the same row: the file source's split state (file, offset, records to skip),
each file's row counter (keyed state) and the sinks' transactions are in the same checkpoint, so each
row is written once. What happens to the prompts after that (gate, route, correlate, audit) is the
content pipeline's own code, run as the backfill lane (`deploy/local/backfills.py`).

Why Parquet and Avro do not go through Flink's file source here: Flink's Parquet format needs Hadoop's
classes on the job's class path (`flink-sql-parquet`, which bundles them, is not on Maven Central for
2.2, and the S3 plugin's Hadoop is shaded inside the plugin's own class loader), and its Avro format
reads records into one declared table schema. The read units (row groups) are what the planner found
in the files' footers, listed in the plan; the source is Flink's checkpointed number sequence.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script by `flink run -py`: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyflink.common import Row, Types
from pyflink.datastream import DataStream, KeyedStream, StreamExecutionEnvironment
from pyflink.datastream.functions import FlatMapFunction, KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor
from pyflink.java_gateway import get_gateway
from pyflink.table import StreamTableEnvironment

from jobs.config import JobConfig

PRIMITIVE_BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
OUT_NAMES = ["kind", "topic", "k", "v", "file", "row", "reason", "detail", "excerpt"]
OUT = Types.ROW_NAMED(OUT_NAMES, [Types.STRING(), Types.STRING(), PRIMITIVE_BYTES, PRIMITIVE_BYTES, Types.STRING(),
                                  Types.LONG(), Types.STRING(), Types.STRING(), Types.STRING()])
LINE = Types.ROW([Types.STRING(), Types.STRING()])  # (file path, line)
KEYED_LINE = Types.ROW([Types.STRING(), LINE])
PROMPTS_SINK, DEAD_SINK, ROWS_VIEW = "backfill_prompts", "backfill_dead_letters", "backfill_rows"


def parse(argv: list[str]) -> argparse.Namespace:
    from rscf.settings import SETTINGS

    p = argparse.ArgumentParser(prog="backfill_ingest")
    p.add_argument("--plan", required=True, help="the plan JSON (operators.backfill.Manifest + units), a file path")
    p.add_argument("--lane", default="backfill", help="topic suffix of the backfill lane")
    p.add_argument("--job-name", required=True)
    p.add_argument("--bootstrap", default=JobConfig().bootstrap)
    p.add_argument("--registry-url", default=JobConfig().registry_url)
    p.add_argument("--max-rows-per-s", type=float, default=0.0, help="0: as fast as the lane takes them")
    p.add_argument("--checkpoint-interval-ms", type=int, default=SETTINGS.limits.backfill_ingest_checkpoint_ms)
    p.add_argument("--yield-busy", type=float, default=0.0,
                   help="halve the pace while the machine's cores are busier than this share (0: never)")
    p.add_argument("--live-busy", type=float, default=0.0,
                   help="live prompts/s above which the pace drops to --live-floor (0: never)")
    p.add_argument("--live-floor", type=float, default=5.0, help="rows/s while live traffic is busy (0: paused, one row per 10 s)")
    p.add_argument("--max-lag-s", type=float, default=0.0,
                   help="hold while the lane is more than this many seconds of its reading behind (0: never)")
    p.add_argument("--lane-group", default="", help="the lane job's consumer group (its lag; needs --max-lag-s)")
    p.add_argument("--execution-mode", default="thread", choices=("thread", "process"),
                   help="process: the rows' Python in a worker process of its own, off the TaskManager's lock")
    p.add_argument("--python-executable", default=None, help="the Python worker's interpreter (a niced wrapper)")
    return p.parse_known_args(argv)[0]


def lane_config(ns: argparse.Namespace) -> JobConfig:
    """The lane's topics; the job name gives the sink's transactional id prefix (stable per backfill)."""
    return JobConfig(job_name=ns.job_name, topic_suffix=ns.lane, bootstrap=ns.bootstrap, registry_url=ns.registry_url)


def pacing(ns: argparse.Namespace) -> dict:
    """`jobs.backfill_pace.Pace`'s arguments besides the budget, and the lane's group whose lag it reads (plain
    values: the functions are pickled)."""
    return {"busy_high": ns.yield_busy, "live_busy": ns.live_busy, "live_floor": ns.live_floor,
            "max_lag_s": ns.max_lag_s if ns.lane_group else 0.0, "lane_group": ns.lane_group}


class _Rows:
    """What both readers share: rows to prompts or dead letters, counters, the row-rate cap."""

    def __init__(self, plan: dict, cfg: JobConfig, max_rows_per_s: float, pacing: dict):
        self.plan_data, self.cfg, self.max_rows_per_s, self.pacing = plan, cfg, max_rows_per_s, pacing

    def open_rows(self, ctx: RuntimeContext) -> None:
        from jobs.clients import topic_serde
        from operators.backfill import BackfillSpec

        self.spec = BackfillSpec.from_dict(self.plan_data["spec"])
        self.serde = topic_serde(self.cfg, self.cfg.prompts, "prompt")
        group = ctx.get_metrics_group().add_group("rscf").add_group("backfill", self.spec.backfill_id)
        self.metrics = {name: group.counter(name) for name in ("rows_read", "rows_dispatched", "rows_dead",
                                                               "rows_skipped")}
        self.done = {tag: ranges for tag, ranges in (self.plan_data.get("done") or {}).items()}
        self.pending = {name: 0 for name in self.metrics}
        self.flushed_at = time.monotonic()
        from jobs.backfill_load import KafkaLoad
        from jobs.backfill_pace import Pace, Paced

        args = dict(self.pacing)
        lane_group = args.pop("lane_group")
        pace = Pace(self.max_rows_per_s, **args)
        load = KafkaLoad(self.cfg.bootstrap, self.cfg.prompts, lane_group) if pace.watches_load else None
        self.paced = Paced(pace, load=load)
        # why a backfill is slow, in the Web UI, `rscf backfill status` and Prometheus (gauges: ints)
        group.gauge("pace_rows_per_s", lambda: int(pace.rate))
        group.gauge("yielding_to_live", lambda: int(pace.live_yielding))
        group.gauge("lane_lag_rows", lambda: int(self.paced.last_lag or 0))

    def count(self, name: str) -> None:
        self.pending[name] += 1

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.flushed_at >= 0.5:
            for name, n in self.pending.items():
                if n:
                    self.metrics[name].inc(n)
                    self.pending[name] = 0
            self.flushed_at = now

    def throttle(self) -> None:
        """Hold the reader to the budget, lower while the machine is busy (back-pressure on the source)."""
        self.paced.wait()

    def skip(self, path: str, row: int) -> bool:
        """A row a run before this one already has a result for (a rerun asks the pools only for the rest)."""
        from operators.backfill import file_tag, in_ranges

        if self.done and in_ranges(self.done.get(file_tag(path)), row):
            self.count("rows_read")
            self.count("rows_skipped")
            return True
        return False

    def emit(self, value, path: str, row: int) -> Row:
        from operators.backfill import BadRow, to_prompt
        from rscf.clock import now_ms

        self.count("rows_read")
        self.throttle()
        out = value if isinstance(value, BadRow) else to_prompt(value, path, row, self.spec, now_ms())
        if isinstance(out, BadRow):
            self.count("rows_dead")
            return Row("dead", None, None, None, out.path, out.row, out.reason, out.detail, out.excerpt)
        self.count("rows_dispatched")
        # positional, in OUT's order (kind, topic, k, v, file, row, reason, detail, excerpt)
        return Row("prompt", self.cfg.prompts, self.spec.tenant.encode(), self.serde.encode(out),
                   None, None, None, None, None)


class BackfillRows(_Rows, KeyedProcessFunction):
    """Keyed by file: numbers its lines (1-based) in keyed state, so a restore numbers on from the same row."""

    def open(self, ctx: RuntimeContext):
        from operators.backfill import file_tag

        self.open_rows(ctx)
        self.rows = ctx.get_state(ValueStateDescriptor("rows_read", Types.LONG()))
        self.planned = {file_tag(f["file"]) for f in self.plan_data["manifest"]["input_files"]}
        self.tag_of: dict[str, str] = {}

    def process_element(self, value, ctx):
        from operators.backfill import file_tag

        path, line = value
        tag = self.tag_of.get(path) or self.tag_of.setdefault(path, file_tag(path))
        if tag not in self.planned:
            return  # a file the plan did not count (it appeared since): the next run's
        row = (self.rows.value() or 0) + 1
        self.rows.update(row)
        if line is None or not line.strip():
            self.flush()
            return  # an empty line is no row (it keeps its number: row numbers are line numbers)
        from operators.backfill import parse_line

        if not self.skip(path, row):
            yield self.emit(parse_line(line, path, row), path, row)
        self.flush()

    def close(self):
        self.flush(force=True)


class ReadUnits(_Rows, FlatMapFunction):
    """Reads one unit (a Parquet row group, an Avro file) and emits all its rows in one call.

    Chained to the number-sequence source (no keyBy, no network buffer in between): the source hands
    over the next unit only when this one is done, so a checkpoint or savepoint barrier comes right after
    the unit in hand. Behind a keyBy, every unit number sat in the buffers ahead of the barrier and a
    stop-with-savepoint read the whole input first (measured: 1,500 of 1,500 rows before the stop).
    """

    def open(self, ctx: RuntimeContext):
        self.open_rows(ctx)
        self.units = self.plan_data["units"]

    def flat_map(self, value):
        from jobs.backfill_files import read_unit

        unit = self.units[int(value)]
        for row_no, row in read_unit(unit, self.spec.fmt):
            if not self.skip(unit["file"], row_no):
                yield self.emit(row, unit["file"], row_no)
        self.flush(force=True)

    def close(self):
        self.flush(force=True)


def _source_ddl(plan: dict) -> str:
    spec = plan["spec"]
    return f"""
CREATE TABLE `backfill_lines` (
  `line` STRING,
  `path` STRING NOT NULL METADATA FROM 'file.path' VIRTUAL
) WITH (
  'connector' = 'filesystem',
  'path' = '{spec["uri"].replace("'", "''")}',
  'format' = 'raw',
  'raw.charset' = 'UTF-8',
  'source.path.regex-pattern' = '.*\\.(jsonl|json|ndjson)'
)"""


def _prompts_ddl(cfg: JobConfig) -> str:
    """The lane's prompts topic, keyed by tenant, one Kafka transaction per checkpoint (stable id prefix per
    backfill, so a restored job aborts what its predecessor left open): the live job's finals sink."""
    from jobs.content_pipeline import sink_ddl

    return sink_ddl(PROMPTS_SINK, [cfg.prompts], cfg, transactional=True, topic_column=False)


def _dead_ddl(plan: dict) -> str:
    from operators.backfill import DEAD_LETTERS_DIR, BackfillSpec

    spec = BackfillSpec.from_dict(plan["spec"])
    path = f"s3://{spec.bucket}/{spec.results_prefix}{DEAD_LETTERS_DIR}"
    return f"""
CREATE TABLE `{DEAD_SINK}` (
  `file` STRING, `row` BIGINT, `reason` STRING, `detail` STRING, `excerpt` STRING
) WITH (
  'connector' = 'filesystem',
  'path' = '{path}',
  'format' = 'json',
  'sink.rolling-policy.file-size' = '64MB'
)"""


def _keyed(stream: DataStream, value_type) -> KeyedStream:
    """Key Row(key, value) rows by their first field in Java (no Python key selector)."""
    stream._j_data_stream.getTransformation().setOutputType(Types.ROW([Types.STRING(), value_type])
                                                            .get_java_type_info())
    j_keyed = stream._j_data_stream.keyBy(get_gateway().jvm.KeyByKeySelector(),
                                           Types.ROW([Types.STRING()]).get_java_type_info())
    return KeyedStream(j_keyed, value_type, stream)


def build(env: StreamExecutionEnvironment, plan: dict, ns: argparse.Namespace) -> StreamTableEnvironment:
    cfg = lane_config(ns)
    t_env = StreamTableEnvironment.create(env)
    t_env.execute_sql(_prompts_ddl(cfg))
    t_env.execute_sql(_dead_ddl(plan))
    if plan["spec"]["format"] == "jsonl":
        t_env.execute_sql(_source_ddl(plan))
        lines = t_env.to_data_stream(t_env.sql_query(
            "SELECT `path` AS `key`, ROW(`path`, `line`) AS `rec` FROM `backfill_lines`"))
        rows = (_keyed(lines, LINE).process(BackfillRows(plan, cfg, ns.max_rows_per_s, pacing(ns)), output_type=OUT)
                .uid("backfill-rows").name("number lines + row -> prompt (by file)"))
    else:
        from pyflink.common import WatermarkStrategy
        from pyflink.datastream.connectors.number_seq import NumberSequenceSource

        units = env.from_source(NumberSequenceSource(0, max(len(plan["units"]) - 1, 0)),
                                WatermarkStrategy.no_watermarks(), "read units").uid("backfill-units")
        if not plan["units"]:
            units = units.filter(lambda _: False)
        rows = (units.flat_map(ReadUnits(plan, cfg, ns.max_rows_per_s, pacing(ns)), output_type=OUT)
                .uid("backfill-units-read").name("read unit + row -> prompt"))
    t_env.create_temporary_view(ROWS_VIEW, t_env.from_data_stream(rows))
    statements = t_env.create_statement_set()
    statements.add_insert_sql(f"INSERT INTO `{PROMPTS_SINK}` SELECT `k`, `v` FROM `{ROWS_VIEW}` "
                              "WHERE `kind` = 'prompt'")
    statements.add_insert_sql(f"INSERT INTO `{DEAD_SINK}` SELECT `file`, `row`, `reason`, `detail`, `excerpt` "
                              f"FROM `{ROWS_VIEW}` WHERE `kind` = 'dead'")
    statements.attach_as_datastream()
    return t_env


def configuration(ns: argparse.Namespace, fmt: str = "jsonl"):
    from pyflink.common import Configuration

    from jobs.config import python_executable, python_path
    from rscf.code_digest import GLOBAL_PARAMETER, code_digest
    from rscf.settings import SETTINGS

    conf = Configuration()
    values = {
        "python.execution-mode": ns.execution_mode,
        "python.executable": ns.python_executable or python_executable(),
        "python.client.executable": python_executable(),
        "python.pythonpath": python_path(),
        "pipeline.name": ns.job_name,
        "pipeline.global-job-parameters": f"{GLOBAL_PARAMETER}:{code_digest()}",  # `rscf job status`: stale code?
        "execution.checkpointing.interval": f"{ns.checkpoint_interval_ms}ms",
        "execution.checkpointing.mode": "EXACTLY_ONCE",
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.dir": f"file://{SETTINGS.paths.data / 'flink' / 'checkpoints'}",
        "state.backend.type": "hashmap",
        "restart-strategy.type": "exponential-delay",
        "restart-strategy.exponential-delay.initial-backoff": "1 s",
        "restart-strategy.exponential-delay.max-backoff": "30 s",
    }
    if fmt == "jsonl":
        # The lines wait on the keyed exchange in front of the paced reader; an aligned barrier waited behind
        # all of them: at 10 rows/s a 600-line input's first checkpoint took 60 s (2026-12-05), so its Kafka
        # transaction, and every row's result, came only after the last line was read. An unaligned barrier
        # overtakes them (they are stored with the checkpoint). Savepoints (`stop`) are aligned still.
        values["execution.checkpointing.unaligned.enabled"] = "true"
    if ns.execution_mode == "process":
        values |= {"python.fn-execution.bundle.size": str(bundle_size(fmt, ns.max_rows_per_s)),
                   "python.fn-execution.bundle.time": "100"}
    for key, value in values.items():
        conf.set_string(key, value)
    return conf


def bundle_size(fmt: str, max_rows_per_s: float) -> int:
    """Elements a process-mode bundle holds: a checkpoint or savepoint barrier waits for those in the Python
    worker's hands, so about a tenth of a second of the pace (1 line at 10 rows/s, at most 100; unpaced:
    100), or ONE read unit for Parquet/Avro (a row group: with 100 a stop read a 15-unit input to its end)."""
    if fmt != "jsonl":
        return 1
    return 100 if max_rows_per_s <= 0 else max(1, min(100, int(max_rows_per_s / 10)))


def main(argv: list[str] | None = None) -> None:
    ns = parse(argv if argv is not None else sys.argv[1:])
    plan = json.loads(Path(ns.plan).read_text())
    env = StreamExecutionEnvironment.get_execution_environment(configuration(ns, plan["spec"]["format"]))
    from operators.backfill import INGEST_PARALLELISM

    env.set_parallelism(INGEST_PARALLELISM)
    build(env, plan, ns)
    env.execute(ns.job_name)


if __name__ == "__main__":
    main()
