"""The fault matrix's pure parts: fault selection, exactly-once accounting, dead letters, model calls, recovery."""

from __future__ import annotations

import pytest

from tools.chaos import (
    account,
    dead_letter_account,
    model_call_account,
    parse_faults,
    passed,
    recovery,
    steady_bound_ms,
    table_header,
    table_row,
)
from tools.faults import CI_FAULTS, FAULT_NAMES, catalogue

KNOWN = ("worker-kill", "poison", "taskmanager-kill", "oversize-record")


# ----------------------------------------------------------------------------- selection
def test_no_selection_means_every_fault_in_catalogue_order():
    assert parse_faults(None, KNOWN) == list(KNOWN)
    assert parse_faults("", KNOWN) == list(KNOWN)
    assert parse_faults("all", KNOWN) == list(KNOWN)


def test_selection_keeps_the_given_order_and_drops_repeats():
    assert parse_faults("poison, worker-kill,poison,", KNOWN) == ["poison", "worker-kill"]


def test_ci_expands_to_the_reduced_matrix():
    assert parse_faults("ci", KNOWN, ci=("worker-kill", "poison")) == ["worker-kill", "poison"]
    assert parse_faults("oversize-record,ci", KNOWN, ci=("poison",)) == ["oversize-record", "poison"]


def test_unknown_or_empty_selection_is_refused():
    with pytest.raises(ValueError, match="unknown fault 'nope'"):
        parse_faults("poison,nope", KNOWN)
    with pytest.raises(ValueError, match="no fault"):
        parse_faults(",", KNOWN)


def test_the_catalogue_has_every_fault_of_the_issue_and_the_ci_matrix_is_part_of_it():
    names = set(FAULT_NAMES)
    for required in ("worker-kill", "worker-hang", "taskmanager-kill", "jobmanager-kill", "kafka-kill", "s3-down",
                     "registry-down", "redis-down", "embedder-down", "worker-slow", "poison", "oversize-record",
                     "id-collision", "redis-latency", "redis-partition"):
        assert required in names
    assert set(CI_FAULTS) <= names
    assert {"worker-kill", "taskmanager-kill", "poison", "oversize-record", "id-collision"} <= set(CI_FAULTS)
    assert all(f.hold_s >= 0 and f.drain_s > 0 for f in catalogue().values())


# ----------------------------------------------------------------------------- accounting
def test_account_counts_once_missing_and_duplicated_per_tenant_and_request():
    sent = [("a", "1"), ("a", "2"), ("a", "3"), ("b", "1")]
    finals = {("a", "1"): ["f"], ("a", "2"): ["f", "f", "f"], ("b", "1"): ["f"], ("z", "9"): ["stray"]}
    audits = {("a", "1"): 1, ("a", "2"): 2, ("b", "1"): 1}
    got = account(sent, finals, audits)
    assert (got["prompts"], got["finals_once"], got["missing"], got["duplicated"], got["extra_finals"]) == (4, 2, 1, 1, 2)
    assert got["missing_ids"] == ["a/3"]
    assert got["duplicated_ids"] == {"a/2": 3}
    assert got["audit_not_once"] == 2  # a/2 twice, a/3 never


def test_same_request_id_of_two_tenants_is_two_prompts():
    sent = [("a", "x"), ("b", "x")]
    assert account(sent, {("a", "x"): ["f"]})["missing_ids"] == ["b/x"]
    assert account(sent, {("a", "x"): ["f"], ("b", "x"): ["f"]})["finals_once"] == 2


def test_a_prompt_sent_twice_is_owed_one_final():
    assert account([("a", "1"), ("a", "1")], {("a", "1"): ["f"]})["prompts"] == 1


def test_dead_letters_are_matched_to_undecodable_records_by_source_position():
    expected = [{"topic": "p", "partition": 0, "offset": 7}, {"topic": "p", "partition": 1, "offset": 3}]
    dls = [{"source_topic": "p", "source_partition": 0, "source_offset": 7, "reason": "undecodable"},
           {"source_topic": "p", "source_partition": 0, "source_offset": 7, "reason": "undecodable"},
           {"source_topic": "r", "source_partition": 0, "source_offset": 1, "reason": "schema"}]
    got = dead_letter_account(expected, dls)
    assert got["undecodable_in"] == 2
    assert (got["dead_lettered_once"], got["undecodable_missing"], got["undecodable_duplicated"]) == (0, 1, 1)
    assert got["dead_letters"] == {"undecodable": 2, "schema": 1}


def test_model_calls_count_repeats_per_request_and_per_attempt():
    calls = [("a", "1", "1"), ("a", "1", "1"), ("a", "1", "2"), ("a", "2", "1"), ("other", "1", "1")]
    got = model_call_account(calls, [("a", "1"), ("a", "2"), ("a", "3")], finals_once=3)
    assert got == {"model_calls": 4, "duplicate_model_calls": 2, "repeated_attempts": 1, "calls_per_final": 1.333}
    assert model_call_account([], [("a", "1")], 0)["calls_per_final"] is None


def test_passed_needs_nothing_missing_nothing_doubled_and_no_error():
    ok = {"missing": 0, "duplicated": 0, "undecodable_missing": 0, "undecodable_duplicated": 0}
    assert passed(ok)
    assert not passed({**ok, "duplicated": 1})
    assert not passed({**ok, "missing": 2})
    assert not passed({**ok, "undecodable_missing": 1})
    assert not passed({**ok, "error": "boom"})
    assert not passed({"fault": "x", "error": "no session"})


# ----------------------------------------------------------------------------- recovery
def test_steady_bound_is_three_times_the_p99_with_a_floor():
    assert steady_bound_ms([]) == 1000
    assert steady_bound_ms([100] * 99 + [200]) == 1000
    assert steady_bound_ms([100] * 50 + [900] * 50) == 2700


def test_recovery_first_final_after_the_fault_and_back_to_steady():
    inject = 10_000
    sent = {("t", "before"): 9_000, ("t", "during1"): 10_500, ("t", "during2"): 11_000, ("t", "after"): 20_000}
    arrival = {("t", "before"): 9_100, ("t", "during1"): 18_000, ("t", "during2"): 18_100, ("t", "after"): 20_100}
    got = recovery(inject, sent, arrival, bound_ms=1000, back_ms=16_000)
    assert got["first_final_s"] == 8.0  # during1's final, 18.0 s - 10.0 s
    assert got["steady_s"] == 8.1  # the last late final (during2) arrived at 18.1 s
    assert got["after_back_s"] == 2.1


def test_recovery_of_a_fault_that_disturbs_nothing_is_zero():
    sent = {("t", str(i)): 1000 * i for i in range(10)}
    arrival = {k: v + 50 for k, v in sent.items()}
    got = recovery(4_000, sent, arrival, bound_ms=1000)
    assert got == {"first_final_s": 0.05, "steady_s": 0.0, "after_back_s": None}


def test_recovery_without_an_answer_after_the_fault_is_none():
    sent = {("t", "a"): 1_000, ("t", "b"): 6_000}
    got = recovery(5_000, sent, {("t", "a"): 1_100}, bound_ms=1000)
    assert got["first_final_s"] is None
    assert got["steady_s"] == 0.0  # of what was answered, nothing came late
    assert recovery(None, sent, {}, 1000)["steady_s"] is None


def test_a_late_final_of_a_prompt_sent_before_the_fault_counts_toward_steady():
    sent = {("t", "inflight"): 9_900, ("t", "after"): 12_000}
    arrival = {("t", "inflight"): 25_000, ("t", "after"): 12_050}
    assert recovery(10_000, sent, arrival, bound_ms=1000)["steady_s"] == 15.0


# ----------------------------------------------------------------------------- table
def test_table_row_lines_up_with_the_header_and_marks_failures():
    row = {"fault": "taskmanager-kill", "prompts": 1000, "finals_once": 982, "missing": 0, "duplicated": 18,
           "audit_not_once": 18, "model_calls": 990, "duplicate_model_calls": 3, "job_restarts": 1,
           "first_final_s": 12.5, "steady_s": 20.25, "job_state": "RUNNING", "dead_letters": {"undecodable": 1}}
    line = table_row(row)
    assert len(line) == len(table_header())
    assert line.rstrip().endswith("NO")
    assert "undecodable:1" in line and "20.2" in line
    assert table_row({"fault": "x", "error": "boom"}).split()[1] == "-"


def test_the_chaos_verb_parses_its_options():
    from cli.main import build_parser

    args = build_parser().parse_args(["chaos", "--faults", "ci", "--rate", "25", "--duration", "10", "--json",
                                      "--out", "m.json", "--delivery", "exactly-once"])
    assert (args.faults, args.rate, args.duration, args.json, args.out, args.delivery) == (
        "ci", 25.0, 10.0, True, "m.json", "exactly-once")


def test_restarts_count_from_zero_again_after_a_jobmanager_restart() -> None:
    from tools.chaos import restarts_since

    assert restarts_since(6, 9) == 3
    assert restarts_since(6, 1) == 1  # the new JobManager's counter started at 0
    assert restarts_since(None, 1) is None
