"""A backfill's plan (files, checksums, rows, read units) and the Parquet/Avro readers, on an in-memory store."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq

from jobs.backfill_files import plan, read_unit
from operators.backfill import BackfillSpec, BadRow


@dataclass
class _Obj:
    object_name: str


class _Resp(io.BytesIO):
    def release_conn(self):
        pass


class FakeStore:
    """The few minio calls the planner and reader make (unit tests only; the integration tests use S3)."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects

    def bucket_exists(self, bucket):
        return bucket == "b"

    def list_objects(self, bucket, prefix="", recursive=False):
        return [_Obj(k) for k in sorted(self.objects) if k.startswith(prefix)]

    def get_object(self, bucket, key):
        return _Resp(self.objects[key])


def _parquet(n: int, group: int) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"prompt": [f"p{i}" for i in range(n)]}), buf, row_group_size=group)
    return buf.getvalue()


def _avro(n: int) -> bytes:
    schema = {"type": "record", "name": "Row", "fields": [{"name": "prompt", "type": "string"}]}
    buf = io.BytesIO()
    fastavro.writer(buf, schema, [{"prompt": f"a{i}"} for i in range(n)])
    return buf.getvalue()


def test_jsonl_plan_counts_non_empty_lines_and_checksums_each_file():
    data = b'{"prompt": "a"}\n\n{"prompt": "b"}\n'
    store = FakeStore({"in/x.jsonl": data, "in/_results/part-00001.parquet": b"x", "in/y.parquet": b"x"})
    manifest, units = plan(BackfillSpec("s3://b/in", "t"), store)
    assert manifest.rows_total == 2 and units == []
    assert manifest.input_files == [{"file": "s3://b/in/x.jsonl", "bytes": len(data),
                                     "sha256": hashlib.sha256(data).hexdigest(), "rows": 2}]


def test_parquet_units_are_row_groups_numbered_on_across_them():
    store = FakeStore({"in/x.parquet": _parquet(25, 10)})
    spec = BackfillSpec("s3://b/in", "t", fmt="parquet")
    manifest, units = plan(spec, store)
    assert manifest.rows_total == 25
    assert [(u["row_group"], u["first_row"], u["rows"]) for u in units] == [(0, 1, 10), (1, 11, 10), (2, 21, 5)]
    rows = list(read_unit(units[1], "parquet", store))
    assert [n for n, _ in rows] == list(range(11, 21)) and rows[0][1] == {"prompt": "p10"}


def test_avro_container_file_is_one_unit_of_records():
    store = FakeStore({"in/x.avro": _avro(7)})
    manifest, units = plan(BackfillSpec("s3://b/in", "t", fmt="avro"), store)
    assert manifest.rows_total == 7 and len(units) == 1
    rows = list(read_unit(units[0], "avro", store))
    assert rows[-1] == (7, {"prompt": "a6"})


def test_a_file_that_stopped_being_parquet_gives_one_dead_letter_per_planned_row():
    store = FakeStore({"in/x.parquet": _parquet(4, 2)})
    _, units = plan(BackfillSpec("s3://b/in", "t", fmt="parquet"), store)
    store.objects["in/x.parquet"] = b"not parquet any more"
    rows = list(read_unit(units[0], "parquet", store))
    assert [n for n, _ in rows] == [1, 2]
    assert all(isinstance(r, BadRow) and r.reason == "unparseable" for _, r in rows)
