"""ImageHandler on a tiny untrained UNet: PNG bytes, sizes, order, seeds, limits."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from inference_workers.handlers import ImageHandler, RequestRejected
from inference_workers.handlers.device import forget_models
from inference_workers.handlers.image import prompt_label
from tests.helpers.tiny_models import build_tiny_image_pipeline


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_image_pipeline(tmp_path_factory.mktemp("tiny-image"))


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    forget_models()
    handler = ImageHandler(tiny_dir, device="cpu", max_batch=4)
    return handler, handler.load_model()


def req(rid, prompt="a red circle", **params):
    return {"request_id": rid, "prompt": prompt, "params": {"steps": 3, **params}}


def test_pngs_at_requested_sizes_in_order(tiny):
    handler, model = tiny
    sizes = [(16, 16), (64, 48), (100, 30)]
    batch = [req(str(i), width=w, height=h, seed=i) for i, (w, h) in enumerate(sizes)]
    out = handler.run_inference(batch, model)
    assert len(out) == 3
    for o, size in zip(out, sizes):
        assert o.content_type == "image/png" and o.artifact.startswith(b"\x89PNG\r\n\x1a\n")
        img = Image.open(io.BytesIO(o.artifact))
        img.load()
        assert img.size == size and img.mode == "RGB"
    # request 1 alone gives the same image as at position 1 of the batch (per-request noise)
    alone = handler.run_inference([batch[1]], model)[0]
    assert alone.artifact == out[1].artifact
    assert out[0].artifact != handler.run_inference([req("0", width=16, height=16, seed=99)], model)[0].artifact


def test_batches_larger_than_max_batch_are_split(tiny):
    handler, model = tiny
    out = handler.run_inference([req(str(i), width=16, height=16) for i in range(6)], model)
    assert len(out) == 6 and len({o.artifact for o in out}) == 6


def test_ddim_eta1_sampler(tiny_dir):
    forget_models()
    handler = ImageHandler(tiny_dir, device="cpu", sampler="ddim")
    out = handler.run_inference([req("d", width=32, height=32, seed=1)], handler.load_model())
    assert Image.open(io.BytesIO(out[0].artifact)).size == (32, 32)


def test_prompt_words_choose_the_class(tiny_dir):
    labels = json.loads((tiny_dir / "labels.json").read_text())
    idx, shape, colour = prompt_label("Draw a BLUE ball please", labels)
    assert (shape, colour) == ("circle", "blue")
    assert idx == labels["shapes"].index("circle") * len(labels["colours"]) + labels["colours"].index("blue")
    assert prompt_label("something abstract", labels)[0] == labels["null_label"]
    assert prompt_label("a green thing", labels)[0] == labels["null_label"]


@pytest.mark.parametrize("bad,reason", [
    (req("x", width=8), "unsupported_size"),
    (req("x", height=4096), "unsupported_size"),
    (req("x", steps=0), "steps_out_of_range"),
    (req("x", steps=10_000), "steps_out_of_range"),
    (req("x", "  "), "empty_prompt"),
])
def test_validate_rejects(tiny, bad, reason):
    with pytest.raises(RequestRejected, match=reason):
        tiny[0].validate(bad)


def test_batch_key_is_size_and_steps(tiny):
    handler, _ = tiny
    assert handler.batch_key(req("a", width=64, height=32, steps=50)) == (64, 32, 50)
    assert handler.batch_key({"request_id": "b", "prompt": "p", "params": {}}) == (256, 256, 50)


def test_classifier_free_guidance_changes_the_image(tiny_dir):
    forget_models()
    plain = ImageHandler(tiny_dir, device="cpu")
    guided = ImageHandler(tiny_dir, device="cpu", guidance_scale=3.0)
    model = plain.load_model()
    r = req("g", width=16, height=16, seed=5)
    a = plain.run_inference([r], model)[0].artifact
    b = guided.run_inference([r], model)[0].artifact
    assert a != b and Image.open(io.BytesIO(b)).size == (16, 16)
