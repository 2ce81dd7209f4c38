"""Priority lane topics: NORMAL keeps the pool's topic name; the job and the worker agree on every lane."""

from __future__ import annotations

from jobs.config import JobConfig
from rscf.settings import SETTINGS


def test_lane_names_are_compatible() -> None:
    t = SETTINGS.topics
    assert t.requests("echo") == "genai.inference.requests.echo" == t.requests("echo", "NORMAL")
    assert t.requests("echo", "HIGH") == "genai.inference.requests.echo.high"
    assert t.requests("echo", "low") == "genai.inference.requests.echo.low"
    assert t.requests("echo", "SOMETHING") == t.requests("echo")  # unknown: the NORMAL lane
    assert t.lanes("g") == ("g.high", "g", "g.low")  # highest first (also the lanes' consumer groups)
    assert set(t.lanes(t.requests("image"))) <= set(t.all())


def test_job_lanes_follow_the_test_suffix() -> None:
    cfg = JobConfig(topic_suffix="it1")
    assert cfg.requests("echo", "HIGH") == "genai.inference.requests.echo.it1.high"
    assert cfg.requests("echo", "HIGH") in cfg.request_topics()
    assert SETTINGS.topics.lanes(cfg.requests("echo")) == tuple(cfg.requests("echo", p) for p in ("HIGH", "NORMAL", "LOW"))
