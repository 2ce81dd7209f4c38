"""`rscf bench burst --pool`: per-pool load scaling, worker arguments and requests (pure logic)."""

from __future__ import annotations

import pytest

from inference_workers.models.shapes_unet import COLOURS, SHAPES, label_for
from tools.burst_bench import Plan
from tools.burst_pools import (POOL_DEFAULTS, build_request, image_prompt, pool_defaults, replica_rps,
                               worker_args)


def test_echo_defaults_are_the_plan_defaults_so_the_echo_figures_stay_comparable():
    plan, echo = Plan(), pool_defaults("echo")
    for key, value in echo.items():
        assert getattr(plan, key) == value, key


def test_image_load_is_scaled_to_one_replica_and_given_values_win():
    image = pool_defaults("image")
    one_replica = replica_rps(image["item_ms"])
    assert 2.5 < one_replica < 3.5  # the shapes DDPM at batch 1, 50 steps
    steady = image["steady_rate"] + image["high_rate"]
    assert steady < one_replica < image["steady_rate"] * image["burst_factor"]  # steady fits, the burst does not
    assert pool_defaults("image", steady_rate=2.0, high_rate=None)["steady_rate"] == 2.0
    assert pool_defaults("image", high_rate=None)["high_rate"] == POOL_DEFAULTS["image"]["high_rate"]
    with pytest.raises(ValueError, match="unknown burst pool"):
        pool_defaults("speech")
    with pytest.raises(ValueError):
        replica_rps(0)


def test_worker_args_simulate_model_time_only_on_echo():
    assert worker_args("echo", 20.0, 1) == ["--echo-latency-ms", "20.0", "--max-batch", "1"]
    assert worker_args("image", 345.0, 4) == ["--max-batch", "4"]


def test_image_prompts_cover_every_class_the_model_knows():
    prompts = {image_prompt(i) for i in range(len(SHAPES) * len(COLOURS))}
    assert len(prompts) == len(SHAPES) * len(COLOURS)
    for p in prompts:
        _, colour, shape = p.split()
        assert label_for(shape, colour) < len(SHAPES) * len(COLOURS)  # not the null label


def test_build_request_per_pool():
    img = build_request("image", 4, "run", "rid-1", "HIGH", 1_000, image_steps=50)
    assert (img["pool"], img["modality"], img["request_id"], img["priority"]) == ("image", "IMAGE", "rid-1", "HIGH")
    assert img["prompt"] == "a green square"
    assert (img["params"]["width"], img["params"]["height"], img["params"]["steps"]) == (32, 32, 50)
    assert img["deadline"] == 601_000 and img["attempt"] == 1
    echo = build_request("echo", 4, "run", "rid-2", "LOW", 1_000)
    assert (echo["pool"], echo["priority"], echo["params"]["steps"]) == ("echo", "LOW", None)
