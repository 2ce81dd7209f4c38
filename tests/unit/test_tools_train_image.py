"""The shapes UNet's training loop: two steps save a pipeline the ImageHandler serves."""

from __future__ import annotations

import io

from PIL import Image

from inference_workers.handlers import ImageHandler
from tools.train_image import train


def test_training_loop_smoke(tmp_path):
    report = train(tmp_path / "m", max_steps=2, batch_size=4, progress=False)
    assert report.steps == 2 and report.final_loss > 0
    assert (tmp_path / "m" / "unet" / "config.json").exists() and (tmp_path / "m" / "labels.json").exists()
    handler = ImageHandler(tmp_path / "m", device="cpu")
    request = {"request_id": "t", "prompt": "a red circle", "params": {"steps": 2, "width": 32, "height": 32}}
    out = handler.run_inference([request], handler.load_model())
    assert Image.open(io.BytesIO(out[0].artifact)).size == (32, 32)
