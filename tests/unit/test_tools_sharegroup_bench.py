"""The sharegroups benchmark's bookkeeping (pure): arms, per-replica spread, loss and duplicates,
a killed replica's in-flight records, ratios. The measuring itself is `rscf bench sharegroups`."""

from tools.sharegroup_bench import Arm, ArmRun, Plan, ratios, table


def test_arms_cover_more_replicas_than_partitions_kills_and_lingers():
    names = [a.name for a in Plan(replicas=4, lingers=(100.0, 1000.0)).arms()]
    assert {"classic-p1", "share-p1", "classic-p2", "share-p2", "classic-p4"} <= set(names)
    assert {"share-p1-linger100", "share-p1-linger1000", "classic-p2-kill", "share-p2-kill"} <= set(names)
    assert [a.name for a in Plan().arms("kill")] == ["classic-p2-kill", "share-p2-kill"]


def test_summary_counts_spread_loss_duplicates_and_the_killed_replicas_in_flight(tmp_path):
    run = ArmRun("127.0.0.1:1", Plan(replicas=3), Arm("share-p1-kill", "share", 1, kill=True), tmp_path, print)
    sent = {"m-0": 100.0, "m-1": 100.1, "m-2": 100.2, "m-3": 100.3, "m-4": 101.5}
    got = {
        "m-0": [("r0", 100.05, 1)],
        "m-1": [("r1", 100.2, 1), ("r2", 103.0, 2)],  # answered by r1, redelivered: a duplicate
        "m-2": [("r2", 102.6, 2)],  # r1 took it and was killed before answering: in flight
        "m-4": [("r0", 101.6, 1)],
    }  # m-3 never answered: lost
    (tmp_path / "share-p1-kill" / "r1.recv").write_text("subscribed 99.0\nm-1 100.12\nm-2 100.25\n")
    s = run._summary(sent, 101.6, got, {"replica": "r1", "at": 101.0, "at_s": 1.0})
    assert (s["sent"], s["answered"], s["lost"], s["duplicated"]) == (5, 4, 1, 1)
    assert s["per_replica"] == {"r0": 2, "r1": 1, "r2": 1} and s["replicas_used"] == 3
    assert s["max_delivery_count"] == 2
    k = s["kill"]
    assert (k["in_flight"], k["in_flight_answered_by_others"], k["in_flight_answered_after_s"]) == (1, 1, 1.6)
    assert k["worst_latency_sent_2s_after_kill_s"] == 0.1  # m-4, sent after the kill


def test_ratios_compare_share_with_classic_on_the_same_topic():
    def row(arm, rps, p99, kill=None):
        return {"arm": arm, "mode": arm.split("-")[0], "replicas": 4, "throughput_per_s": rps,
                "latency": {"p99_ms": p99}, "kill": kill}

    rows = [row("classic-p1", 40.0, 1000.0), row("share-p1", 120.0, 250.0), row("classic-p4", 125.0, 200.0),
            row("classic-p2-kill", 60.0, 7000.0, {"worst_latency_sent_2s_after_kill_s": 7.0}),
            row("share-p2-kill", 60.0, 400.0, {"worst_latency_sent_2s_after_kill_s": 0.35})]
    r = ratios(rows)
    assert r == {"p1_throughput_share_over_classic": 3.0, "p1_p99_share_over_classic": 0.25,
                 "share_p1_over_classic_p_eq_n_throughput": 0.96, "share_p1_over_classic_p_eq_n_p99": 1.25,
                 "kill_worst_latency_share_over_classic": 0.05}
    lines = table({"arms": [{**rows[0], "mode": "classic", "partitions": 1, "replicas": 4, "linger_ms": 5.0,
                             "sent": 10, "lost": 0, "duplicated": 0, "per_replica": {"r0": 10, "r1": 0},
                             "drain_s": 1.0, "latency": {"p50_ms": 5.0, "p99_ms": 9.0}}], "ratios": r}).splitlines()
    assert lines[1].startswith("classic-p1") and "10/0" in lines[1] and lines[-1].startswith("ratios:")
