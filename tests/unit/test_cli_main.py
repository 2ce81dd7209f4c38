"""The `rscf` parser: every verb registered, arguments wired to the right types."""

from __future__ import annotations

import argparse

from cli.main import build_parser


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def _verbs(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Top-level verb -> its subcommands (empty for verbs without any)."""
    return {name: list(_subcommands(sub)) for name, sub in _subcommands(parser).items()}


def test_every_verb_is_registered():
    assert _verbs(build_parser()) == {
        "up": [], "status": [], "down": [],
        "schemas": ["register", "check"],
        "submit": [], "produce": [], "results": [],
        "bench": ["serde", "pipeline", "embeddings", "vectors", "gateway", "handlers", "workers", "burst", "coldstart", "sharegroups", "s3-encryption", "backfill"],
        "job": ["start", "stop", "savepoint", "status"],
        "models": ["list", "publish", "fetch", "build-defaults", "train-image"],
        "worker": ["run"],
        "workers": ["start", "stop", "status", "scale", "autoscale"],
        "demo": [],
        "kb": ["ingest"],
        "chaos": [],
        "evaluate": [],
        "tenants": ["keys"],
        "backfill": ["start", "status", "stop", "resume"],
        "topics": ["partitions"],
        "credentials": ["kafka", "prometheus", "redis", "s3", "flink", "registry"],
    }


def test_arguments_are_wired():
    parser = build_parser()
    args = parser.parse_args(["submit", "--tenant", "t", "--modality", "TEXT", "--max-tokens", "5", "hi"])
    assert (args.modality, args.max_tokens, args.prompt, args.priority) == ("text", 5, "hi", "normal")
    assert parser.parse_args(["schemas", "check", "x.avsc", "--json"]).json
    assert parser.parse_args(["bench", "serde", "--n", "10"]).n == 10
    assert parser.parse_args(["results", "--follow", "--max", "2"]).max == 2
    assert parser.parse_args(["credentials", "kafka", "tenant-acme", "--json"]).principal == "tenant-acme"
    assert parser.parse_args(["credentials", "prometheus", "--user", "prometheus", "--json"]).user == "prometheus"
    assert parser.parse_args(["credentials", "redis", "operator", "--json"]).user == "operator"
    assert parser.parse_args(["credentials", "s3", "tenant-acme", "--json"]).name == "tenant-acme"
