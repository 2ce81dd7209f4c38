"""Images from a diffusers pipeline, returned as PNG bytes.

Two kinds of pipeline directory are served:
- the project's class-conditioned shapes UNet (`labels.json` next to a DDPMPipeline
  layout, see models/shapes_unet.py): prompt words choose shape and colour, sampled
  with our own loop so each request keeps its own noise generator (DDPM, or DDIM
  with eta=1: DDIM eta=0 gives mush at this training level);
- any other diffusers pipeline that takes `prompt=` (Stable Diffusion and kin on a GPU),
  called with one generator per request.
Images are generated at the model's native size and resized to the requested
width/height with PIL (nearest for integer upscales, bicubic otherwise).
"""

from __future__ import annotations

import io
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Sequence

from rscf.settings import SETTINGS

from .base import InferenceOutput, RequestRejected
from .device import TorchModelHandler, param, split_to_fit, stable_seed

_SYNONYMS = {
    "circles": "circle", "round": "circle", "disc": "circle", "disk": "circle", "ball": "circle",
    "squares": "square", "box": "square", "rectangle": "square", "block": "square",
    "triangles": "triangle", "pyramid": "triangle",
    "violet": "purple", "gold": "yellow",
}


@dataclass
class ImageModel:
    kind: str  # "shapes" (our class-conditioned UNet) or "pipeline" (generic prompt pipeline)
    unet: Any = None
    scheduler_config: Any = None
    labels: dict | None = None
    pipeline: Any = None


def prompt_label(prompt: str, labels: dict) -> tuple[int, str | None, str | None]:
    """(class index, shape, colour) named by the prompt's words; the null class when either is missing."""
    shapes, colours = labels["shapes"], labels["colours"]
    shape = colour = None
    for word in re.findall(r"[a-z]+", prompt.lower()):
        word = _SYNONYMS.get(word, word)
        if shape is None and word in shapes:
            shape = word
        elif colour is None and word in colours:
            colour = word
    if shape is None or colour is None:
        return labels["null_label"], shape, colour
    return shapes.index(shape) * len(colours) + colours.index(colour), shape, colour


def to_png(pixels, width: int, height: int) -> bytes:
    """uint8 HxWx3 array to PNG bytes at the requested size."""
    from PIL import Image

    img = Image.fromarray(pixels)
    if img.size != (width, height):
        integer = width % img.width == 0 and height % img.height == 0 and width >= img.width
        img = img.resize((width, height), Image.NEAREST if integer else Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class ImageHandler(TorchModelHandler[ImageModel]):
    model_name = "shapes-ddpm"
    model_version = "0"
    modality = "IMAGE"

    def __init__(
        self,
        model_path: str,
        model_name: str | None = None,
        model_version: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        max_batch: int | None = None,
        default_size: int = 256,
        default_steps: int = 50,
        sampler: str = "ddpm",
        guidance_scale: float = 1.0,
        **_: Any,
    ):
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"unknown sampler {sampler!r} (ddpm or ddim)")
        super().__init__(model_path, model_name, model_version, device, dtype, max_batch)
        self.default_size = default_size
        self.default_steps = default_steps
        self.sampler = sampler
        # classifier-free guidance for the shapes model (trained with 10% null labels); 1.0 = off
        self.guidance_scale = guidance_scale

    def _load(self) -> ImageModel:
        root = Path(self.model_path)
        labels_file = root / "labels.json"
        index = json.loads((root / "model_index.json").read_text()) if (root / "model_index.json").exists() else {}
        if index.get("_class_name") == "DDPMPipeline" or labels_file.exists():
            from diffusers import DDPMScheduler, UNet2DModel

            unet = UNet2DModel.from_pretrained(str(root / "unet"), torch_dtype=self.plan.dtype)
            unet.to(self.plan.device).eval()
            scheduler = DDPMScheduler.from_pretrained(str(root / "scheduler"))
            labels = json.loads(labels_file.read_text()) if labels_file.exists() else None
            return ImageModel(kind="shapes", unet=unet, scheduler_config=scheduler.config, labels=labels)
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(self.model_path, torch_dtype=self.plan.dtype)
        pipe.to(self.plan.device)
        pipe.set_progress_bar_config(disable=True)
        return ImageModel(kind="pipeline", pipeline=pipe)

    def _size(self, request: dict) -> tuple[int, int]:
        return int(param(request, "width", self.default_size)), int(param(request, "height", self.default_size))

    def _steps(self, request: dict) -> int:
        return int(param(request, "steps", self.default_steps))

    def validate(self, request: dict) -> None:
        prompt = request.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestRejected("empty_prompt")
        if len(prompt) > SETTINGS.limits.max_prompt_chars:
            raise RequestRejected("prompt_too_long")
        lo, hi = SETTINGS.limits.min_image_size, SETTINGS.limits.max_image_size
        for name, value in zip(("width", "height"), self._size(request)):
            if not lo <= value <= hi:
                raise RequestRejected(f"unsupported_size: {name} {value} not in {lo}..{hi}")
        steps = self._steps(request)
        if not 1 <= steps <= SETTINGS.limits.max_image_steps:
            raise RequestRejected(f"steps_out_of_range: {steps} not in 1..{SETTINGS.limits.max_image_steps}")

    def batch_key(self, request: dict) -> Hashable:
        width, height = self._size(request)
        return (width, height, self._steps(request))

    def _estimate(self, chunk: Sequence[dict]) -> int:
        width, height = self._size(chunk[0])
        # activations of a UNet scale with pixels; 2 KiB per latent pixel per image is a safe SD-class bound
        return len(chunk) * max(64 * 64, (width // 8) * (height // 8)) * 2048

    def run_inference(self, batch: Sequence[dict], model: ImageModel) -> list[InferenceOutput]:
        outputs: list[InferenceOutput] = []
        for chunk in split_to_fit(batch, self.plan.max_batch, self._estimate, self.guard):
            if len(chunk) == 1 and not self.guard.fits(self._estimate(chunk)):
                outputs.append(InferenceOutput(error="insufficient_device_memory", retryable=True))
                continue
            if model.kind == "shapes":
                outputs.extend(self._run_shapes(chunk, model))
            else:
                outputs.extend(self._run_pipeline(chunk, model))
        return outputs

    def _generators(self, chunk: Sequence[dict]):
        import torch

        gens = []
        for request in chunk:
            g = torch.Generator(device=self.plan.device)
            g.manual_seed(stable_seed(request))
            gens.append(g)
        return gens

    def _run_shapes(self, chunk: Sequence[dict], model: ImageModel) -> list[InferenceOutput]:
        import torch
        from diffusers import DDIMScheduler, DDPMScheduler
        from diffusers.utils.torch_utils import randn_tensor

        unet = model.unet
        steps = self._steps(chunk[0])
        scheduler = (DDIMScheduler if self.sampler == "ddim" else DDPMScheduler).from_config(model.scheduler_config)
        scheduler.set_timesteps(steps)
        size = unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        gens = self._generators(chunk)
        labels_used = []
        class_ids = []
        for request in chunk:
            if model.labels:
                idx, shape, colour = prompt_label(request["prompt"], model.labels)
                class_ids.append(idx)
                labels_used.append({"shape": shape, "colour": colour})
            else:
                labels_used.append({})
        x = randn_tensor((len(chunk), unet.config.in_channels, size, size), generator=gens,
                         device=torch.device(self.plan.device), dtype=self.plan.dtype)
        class_labels = torch.tensor(class_ids, device=self.plan.device) if class_ids else None
        started = time.perf_counter()
        with torch.inference_mode():
            for t in scheduler.timesteps:
                if class_labels is not None and self.guidance_scale != 1.0:
                    null = torch.full_like(class_labels, model.labels["null_label"])
                    both = unet(torch.cat([x, x]), t, class_labels=torch.cat([class_labels, null])).sample
                    cond, uncond = both.chunk(2)
                    eps = uncond + self.guidance_scale * (cond - uncond)
                else:
                    eps = unet(x, t, class_labels=class_labels).sample
                kwargs = {"eta": 1.0} if self.sampler == "ddim" else {}
                x = scheduler.step(eps, t, x, generator=gens, **kwargs).prev_sample
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        pixels = ((x.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
        results = []
        for i, request in enumerate(chunk):
            width, height = self._size(request)
            results.append(InferenceOutput(
                artifact=to_png(pixels[i], width, height), content_type="image/png",
                extra={"label": labels_used[i], "native_size": size, "steps": steps,
                       "batch_generate_ms": round(elapsed_ms, 1)},
            ))
        return results

    def _run_pipeline(self, chunk: Sequence[dict], model: ImageModel) -> list[InferenceOutput]:
        import numpy as np

        width, height = self._size(chunk[0])
        started = time.perf_counter()
        result = model.pipeline(
            prompt=[r["prompt"] for r in chunk], num_inference_steps=self._steps(chunk[0]),
            width=width, height=height, generator=self._generators(chunk), output_type="np",
        )
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        images = (np.clip(result.images, 0, 1) * 255).round().astype("uint8")
        return [
            InferenceOutput(artifact=to_png(images[i], width, height), content_type="image/png",
                            extra={"batch_generate_ms": round(elapsed_ms, 1)})
            for i in range(len(chunk))
        ]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.plan.describe(), "model_path": self.model_path,
                "sampler": self.sampler, "default_steps": self.default_steps,
                "guidance_scale": self.guidance_scale}
