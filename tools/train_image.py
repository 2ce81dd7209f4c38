"""Train the small class-conditioned image diffusion model that the `image` pool serves.

No pretrained image model can be installed here, so we train one: a ~0.7M-parameter
`UNet2DModel` on procedurally drawn 32x32 shapes (circle / square / triangle in one of
a few colours on a plain background). The class label is (shape, colour); prompt words
pick it at inference time, and a spare "null" label (used for 10% of training samples)
serves prompts that name neither. The result is saved as a diffusers `DDPMPipeline`
directory (unet + scheduler) plus `labels.json`, small enough to commit. The architecture and
the label vocabulary are the runtime's (`inference_workers/models/shapes_unet.py`); this is the
training loop and its data.

Reproduce the committed artifact with:
    rscf models train-image --minutes 8 --seed 0 --out inference_workers/models/artifacts/shapes-ddpm
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from inference_workers.models.shapes_unet import (
    COLOURS,
    IMAGE_SIZE,
    SHAPES,
    build_scheduler,
    build_unet,
    label_for,
    null_label,
    save_pipeline,
)

# Backgrounds are muted so every shape colour stands out.
BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (245, 245, 240),
    (200, 200, 200),
    (40, 40, 45),
    (170, 190, 210),
    (215, 200, 170),
)


def draw_shape(shape: str, colour: str, rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """One training image: drawn at 4x and downsampled so edges are anti-aliased."""
    scale = 4
    big = size * scale
    img = Image.new("RGB", (big, big), rng.choice(BACKGROUNDS))
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.38) * big
    cx = rng.uniform(r + 2, big - r - 2)
    cy = rng.uniform(r + 2, big - r - 2)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        pts = [(cx, cy - r), (cx - r * 0.95, cy + r * 0.8), (cx + r * 0.95, cy + r * 0.8)]
        d.polygon(pts, fill=fill)
    return img.resize((size, size), Image.LANCZOS)


def make_dataset(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` images as float32 in [-1, 1] (N, 3, H, W) with their class labels."""
    rng = random.Random(seed)
    images = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    labels = np.empty((n,), dtype=np.int64)
    colour_names = list(COLOURS)
    for i in range(n):
        shape = rng.choice(SHAPES)
        colour = rng.choice(colour_names)
        arr = np.asarray(draw_shape(shape, colour, rng), dtype=np.float32)
        images[i] = arr.transpose(2, 0, 1) / 127.5 - 1.0
        labels[i] = label_for(shape, colour)
    return images, labels


@dataclass
class TrainReport:
    steps: int
    seconds: float
    final_loss: float
    params: int
    out: str


def train(
    out: Path,
    minutes: float = 5.0,
    max_steps: int | None = None,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    dataset_size: int = 12_000,
    threads: int = 1,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainReport:
    """Train for a wall-clock budget (or `max_steps`), keep an EMA of the weights, save the EMA."""
    import copy

    import torch
    from tqdm import tqdm

    torch.set_num_threads(threads)
    torch.set_grad_enabled(True)
    torch.manual_seed(seed)
    images, labels = make_dataset(dataset_size if max_steps is None else batch_size * 2, seed)
    x_all = torch.from_numpy(images)
    y_all = torch.from_numpy(labels)
    unet = build_unet()
    ema = copy.deepcopy(unet).eval()
    ema.requires_grad_(False)
    scheduler = build_scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-4)
    budget = minutes * 60.0
    gen = torch.Generator().manual_seed(seed)
    start = time.monotonic()
    step = 0
    loss_avg = float("nan")
    bar = tqdm(total=max_steps or int(budget), unit="step" if max_steps else "s",
               desc="train-image", disable=not progress)
    while True:
        elapsed = time.monotonic() - start
        if max_steps is not None and step >= max_steps:
            break
        if max_steps is None and elapsed >= budget:
            break
        frac = step / max_steps if max_steps else elapsed / budget
        warm = min(1.0, (step + 1) / 50)
        for g in opt.param_groups:  # warmup, then cosine decay over the time budget
            g["lr"] = lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        idx = torch.randint(0, x_all.shape[0], (batch_size,), generator=gen)
        x0 = x_all[idx]
        if torch.rand(1, generator=gen).item() < 0.5:  # horizontal flips keep labels valid
            x0 = x0.flip(-1)
        y = y_all[idx].clone()
        y[torch.rand(batch_size, generator=gen) < 0.1] = null_label()
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=gen)
        noisy = scheduler.add_noise(x0, noise, t)
        pred = unet(noisy, t, class_labels=y).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        decay = min(0.998, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.mul_(decay).add_(p.detach(), alpha=1 - decay)
        step += 1
        loss_avg = loss.item() if math.isnan(loss_avg) else 0.98 * loss_avg + 0.02 * loss.item()
        if on_step:
            on_step(step, loss_avg)
        if max_steps:
            bar.update(1)
        else:
            bar.n = min(int(time.monotonic() - start), int(budget))
            bar.refresh()
        bar.set_postfix(step=step, loss=f"{loss_avg:.4f}", refresh=False)
    bar.close()
    save_pipeline(ema, scheduler, Path(out))
    params = sum(p.numel() for p in ema.parameters())
    report = TrainReport(step, time.monotonic() - start, loss_avg, params, str(out))
    (Path(out) / "training.json").write_text(json.dumps(report.__dict__, indent=2))
    return report


if __name__ == "__main__":  # `python -m tools.train_image 5 OUT`
    import sys

    mins = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    dest = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("shapes-ddpm")
    print(train(dest, minutes=mins))
