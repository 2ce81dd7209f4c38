"""grow_plan: which lanes `rscf topics partitions --count N` grows, and what it refuses (pure)."""

from rscf.kafka_clients import grow_plan


def test_grows_only_what_is_below_the_count():
    grow, errors = grow_plan({"a": 1, "b": 4, "c": 2}, 4)
    assert grow == ["a", "c"] and errors == []


def test_never_shrinks_and_names_missing_topics():
    grow, errors = grow_plan({"a": 8, "b": None, "c": 1}, 4)
    assert grow == ["c"]
    assert any("a: has 8 partitions" in e and "cannot remove" in e for e in errors)
    assert any(e.startswith("b: no such topic") for e in errors)


def test_a_count_below_one_is_refused():
    assert grow_plan({"a": 1}, 0) == ([], ["a topic needs at least 1 partition (not 0)"])
