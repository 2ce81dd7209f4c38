"""Per-run logs are pruned by family, newest kept (rscf/run_logs.py)."""

from __future__ import annotations

import os

from rscf.run_logs import family, open_run_log, prune


def _touch(path, mtime: float) -> None:
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))


def test_family_replaces_run_ids_only():
    assert family("echo-rscf-bench2302f7-bench2302f7.log") == "echo-rscf-bench*-bench*.log"
    assert family("backfill-a56a2c8b9189-results.log") == "backfill-*-results.log"
    assert family("gateway.log") == "gateway.log"
    assert family("worker-echo-0.log") == "worker-echo-0.log"


def test_opening_a_run_log_keeps_the_newest_of_its_family_and_nothing_else(tmp_path):
    for i in range(6):
        _touch(tmp_path / f"echo-rscf-bench{i:06x}a-bench{i:06x}a.log", 1_000 + i)
    _touch(tmp_path / "backfill-abcdef12-results.log", 10)  # another family, older than all
    _touch(tmp_path / "gateway.log", 5)
    with open_run_log("echo-rscf-benchffffffa-benchffffffa.log", tmp_path, keep=3) as f:
        f.write(b"new run\n")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["backfill-abcdef12-results.log", "echo-rscf-bench000004a-bench000004a.log",
                    "echo-rscf-bench000005a-bench000005a.log", "echo-rscf-benchffffffa-benchffffffa.log",
                    "gateway.log"]


def test_a_name_without_a_run_id_is_never_pruned(tmp_path):
    _touch(tmp_path / "gateway.log", 1)
    with open_run_log("gateway.log", tmp_path, keep=0) as f:
        f.write(b"more\n")
    assert (tmp_path / "gateway.log").read_bytes() == b"xmore\n"


def test_prune_returns_what_it_removed(tmp_path):
    for i in range(4):
        _touch(tmp_path / f"backfill-{i:08x}-results.log", 100 + i)
    removed = prune(tmp_path, "backfill-*-results.log", keep=1)
    assert sorted(p.name for p in removed) == [f"backfill-{i:08x}-results.log" for i in range(3)]
