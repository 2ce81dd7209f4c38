"""The serde benchmark's plumbing, on a tiny n with the in-process registry."""

from __future__ import annotations

from tools.serde_bench import bench_serde


def test_bench_serde_reports_both_paths():
    result = bench_serde(200)
    rates = result["records_per_s"]
    assert set(rates) == {"plain_encode", "serde_encode", "plain_decode", "serde_decode",
                          "serde_decode_resolving_old_writer"}
    assert all(v > 0 for v in rates.values())
    assert result["record_bytes"] > 5 and result["registry"] == "in-process"
