"""The shapes UNet's architecture and label vocabulary: what the `image` pool's model is.

A ~0.7M-parameter class-conditioned `UNet2DModel` for 32x32 images of a shape (circle / square /
triangle) in one of a few colours. The class label is (shape, colour); a spare "null" label serves
prompts that name neither. A model is saved as a diffusers `DDPMPipeline` directory (unet +
scheduler) plus `labels.json`, which the ImageHandler reads to map prompt words to a label.
Training lives in `tools/train_image.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
IMAGE_SIZE = 32


def num_labels() -> int:
    """Shape x colour classes plus one unconditional label (the last index)."""
    return len(SHAPES) * len(COLOURS) + 1


def null_label() -> int:
    return num_labels() - 1


def label_for(shape: str | None, colour: str | None) -> int:
    """Class index for a (shape, colour) pair; unknown parts fall back to the null label."""
    if shape not in SHAPES or colour not in COLOURS:
        return null_label()
    return SHAPES.index(shape) * len(COLOURS) + list(COLOURS).index(colour)


def build_unet(sample_size: int = IMAGE_SIZE, channels: tuple[int, ...] = (16, 32, 64)):
    """The small UNet: three resolutions, attention only at the lowest one."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=sample_size,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=channels,
        down_block_types=("DownBlock2D",) * (len(channels) - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (len(channels) - 1),
        norm_num_groups=8,
        num_class_embeds=num_labels(),
    )


def build_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")


def write_labels(out: Path) -> None:
    (out / "labels.json").write_text(
        json.dumps(
            {"shapes": list(SHAPES), "colours": list(COLOURS), "null_label": null_label(),
             "image_size": IMAGE_SIZE},
            indent=2,
        )
    )


def save_pipeline(unet, scheduler, out: Path) -> Path:
    """A DDPMPipeline directory (loadable by diffusers) plus the label vocabulary."""
    from diffusers import DDPMPipeline

    out.mkdir(parents=True, exist_ok=True)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(str(out))
    write_labels(out)
    return out
