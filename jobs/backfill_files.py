"""A backfill's input files in object storage: the plan (files, checksums, row counts, read units) and
reading one unit of a Parquet or Avro file.

The plan is made once, before the job starts, by reading every input file (a SHA-256 of each file for
the manifest, and its rows: JSON Lines lines, Parquet footers' row-group sizes, Avro records), so the
progress bar has a total and a rerun can tell a changed file from the same one. 100,000 JSON lines
(~10 MB) plan in about a second.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any, Iterator

from operators.backfill import BackfillSpec, Manifest, input_files
from rscf.s3_security import ADMIN, JOB


def _client(identity: str = ADMIN):
    """The operator's key (planning, in the CLI) or the job's (`read_unit`, in the Flink job)."""
    from rscf.s3 import s3_client

    return s3_client(identity=identity)


def _read(client, bucket: str, key: str) -> bytes:
    resp = client.get_object(bucket, key)
    try:
        return resp.read()
    finally:
        resp.close()
        resp.release_conn()


def plan(spec: BackfillSpec, client=None) -> tuple[Manifest, list[dict[str, Any]]]:
    """(manifest with its input files, read units) of a backfill; units are for Parquet and Avro."""
    client = client or _client()
    if not client.bucket_exists(spec.bucket):
        raise FileNotFoundError(f"bucket {spec.bucket} does not exist")
    keys = [o.object_name for o in client.list_objects(spec.bucket, prefix=spec.prefix, recursive=True)]
    files = input_files(keys, spec)
    manifest = Manifest(spec=spec.to_dict())
    units: list[dict[str, Any]] = []
    for key in files:
        data = _read(client, spec.bucket, key)
        path = f"s3://{spec.bucket}/{key}"
        rows, file_units = _rows_and_units(data, spec.fmt, path)
        units.extend(file_units)
        manifest.input_files.append({"file": path, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                                     "rows": rows})
        manifest.rows_total += rows
    return manifest, units


def _rows_and_units(data: bytes, fmt: str, path: str) -> tuple[int, list[dict[str, Any]]]:
    if fmt == "jsonl":
        lines = data.split(b"\n")
        return sum(1 for line in lines if line.strip()), []
    if fmt == "parquet":
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(io.BytesIO(data)).metadata
        units, first = [], 1
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            units.append({"file": path, "row_group": g, "first_row": first, "rows": n})
            first += n
        return meta.num_rows, units
    import fastavro

    n = sum(1 for _ in fastavro.reader(io.BytesIO(data)))
    return n, [{"file": path, "row_group": None, "first_row": 1, "rows": n}]


def read_unit(unit: dict[str, Any], fmt: str, client=None) -> Iterator[tuple[int, Any]]:
    """(row number, row dict) of one read unit; a row that does not decode is a BadRow with its number."""
    from operators.backfill import BadRow

    bucket, _, key = unit["file"][len("s3://"):].partition("/")
    data = _read(client or _client(JOB), bucket, key)
    row_no = unit["first_row"]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(io.BytesIO(data)).read_row_group(unit["row_group"])
        except Exception as exc:  # noqa: BLE001 - a file that stopped being Parquet: every row is a dead letter
            for i in range(unit["rows"]):
                yield row_no + i, BadRow(unit["file"], row_no + i, "unparseable", f"{type(exc).__name__}: {exc}"[:300])
            return
        for i, row in enumerate(table.to_pylist()):
            yield row_no + i, row
        return
    import fastavro

    try:
        for i, row in enumerate(fastavro.reader(io.BytesIO(data))):
            yield row_no + i, row if isinstance(row, dict) else BadRow(unit["file"], row_no + i, "schema_mismatch",
                                                                       "an Avro record is needed")
    except Exception as exc:  # noqa: BLE001 - a corrupt block: the rest of the file is one dead letter
        yield row_no, BadRow(unit["file"], row_no, "unparseable", f"{type(exc).__name__}: {exc}"[:300])
