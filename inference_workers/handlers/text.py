"""Causal language models through transformers, with batched generation.

One handler serves SmolLM2-135M on a CPU and any Hugging Face causal LM (hub id or
local directory) on a GPU. Batches are left-padded; requests are grouped by a
bucket of their token budget so short answers do not wait for long ones. Sampling
is done per row by a logits processor with one RNG per request, so temperature,
top_p and seed are honoured per request inside a shared batch and a retried request
(same seed, or same request_id when no seed is given) generates the same text.
"""

from __future__ import annotations

import bisect
import time
from dataclasses import dataclass
from typing import Any, Hashable, Sequence

from rscf.settings import SETTINGS

from .base import InferenceOutput, RequestRejected
from .device import TorchModelHandler, param, split_to_fit, stable_seed

TOKEN_BUCKETS: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


@dataclass
class TextModel:
    model: Any
    tokenizer: Any
    eos_ids: tuple[int, ...]
    use_chat_template: bool


class PerRowSampler:
    """Logits processor that picks each row's next token itself and forces greedy decoding to take it.

    Row i samples with its own temperature/top_p and torch.Generator (temperature 0 =
    greedy) and is forced to EOS once it reaches its own token budget.
    """

    def __init__(self, temperatures, top_ps, seeds, budgets, prompt_len: int, eos_id: int, device):
        import torch

        self.temperatures = temperatures
        self.top_ps = top_ps
        self.budgets = budgets
        self.prompt_len = prompt_len
        self.eos_id = eos_id
        self.generators = []
        for seed in seeds:
            g = torch.Generator(device=device)
            g.manual_seed(int(seed))
            self.generators.append(g)

    def __call__(self, input_ids, scores):
        import torch

        step = input_ids.shape[1] - self.prompt_len
        scores = scores.float()
        device = scores.device
        temps = torch.tensor(self.temperatures, device=device, dtype=torch.float32)
        top_ps = torch.tensor(self.top_ps, device=device, dtype=torch.float32)
        # one uniform draw per row from that row's own generator: batch-mates never shift each other's RNG
        u = torch.stack([torch.rand((), generator=g, device=device) for g in self.generators])
        probs = torch.softmax(scores / temps.clamp_min(1e-5).unsqueeze(1), dim=-1)
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        keep = (torch.cumsum(sorted_p, dim=-1) - sorted_p) < top_ps.unsqueeze(1)  # always keeps the top token
        sorted_p = sorted_p * keep
        cdf = torch.cumsum(sorted_p, dim=-1)
        target = (u * cdf[:, -1]).unsqueeze(1)
        pick = torch.searchsorted(cdf, target).clamp_max(cdf.shape[1] - 1)
        chosen = order.gather(1, pick).squeeze(1)
        chosen = torch.where(temps <= 0, scores.argmax(dim=-1), chosen)
        done = torch.tensor([step >= b for b in self.budgets], device=device)
        chosen = torch.where(done, torch.full_like(chosen, self.eos_id), chosen)
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, chosen.unsqueeze(1), 0.0)
        return forced


class TextHandler(TorchModelHandler[TextModel]):
    model_name = "smollm2-135m"
    model_version = "0"
    modality = "TEXT"

    def __init__(
        self,
        model_path: str,
        model_name: str | None = None,
        model_version: str | None = None,
        device: str | None = None,
        dtype: str | None = None,
        max_batch: int | None = None,
        max_new_tokens: int | None = None,
        default_max_tokens: int = 64,
        max_prompt_tokens: int = 1024,
        default_temperature: float = 0.7,
        default_top_p: float = 0.95,
        use_chat_template: bool | None = None,
        **_: Any,
    ):
        super().__init__(model_path, model_name, model_version, device, dtype, max_batch)
        self.max_new_tokens = max_new_tokens or SETTINGS.limits.max_text_tokens
        self.default_max_tokens = min(default_max_tokens, self.max_new_tokens)
        self.max_prompt_tokens = max_prompt_tokens
        self.default_temperature = default_temperature
        self.default_top_p = default_top_p
        self.use_chat_template = use_chat_template
        self._kv_bytes_per_token: int | None = None

    # -- loading -------------------------------------------------------------------------------
    def _load(self) -> TextModel:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.plan.dtype)
        model.to(self.plan.device).eval()
        eos = model.generation_config.eos_token_id
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
            eos_ids = eos_ids + (tokenizer.eos_token_id,)
        chat = self.use_chat_template
        if chat is None:
            chat = bool(getattr(tokenizer, "chat_template", None))
        cfg = model.config
        layers = getattr(cfg, "num_hidden_layers", 12)
        heads = getattr(cfg, "num_attention_heads", 12)
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        self._kv_bytes_per_token = 2 * layers * kv_heads * head_dim * torch.finfo(self.plan.dtype).bits // 8
        return TextModel(model=model, tokenizer=tokenizer, eos_ids=eos_ids, use_chat_template=chat)

    # -- batching ------------------------------------------------------------------------------
    def _budget(self, request: dict) -> int:
        return int(param(request, "max_tokens", self.default_max_tokens))

    def validate(self, request: dict) -> None:
        prompt = request.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise RequestRejected("empty_prompt")
        if len(prompt) > SETTINGS.limits.max_prompt_chars:
            raise RequestRejected(f"prompt_too_long: {len(prompt)} > {SETTINGS.limits.max_prompt_chars} chars")
        budget = self._budget(request)
        if budget < 1 or budget > self.max_new_tokens:
            raise RequestRejected(f"max_tokens_out_of_range: {budget} not in 1..{self.max_new_tokens}")
        temperature = param(request, "temperature")
        if temperature is not None and not 0.0 <= float(temperature) <= 5.0:
            raise RequestRejected(f"temperature_out_of_range: {temperature}")
        top_p = param(request, "top_p")
        if top_p is not None and not 0.0 < float(top_p) <= 1.0:
            raise RequestRejected(f"top_p_out_of_range: {top_p}")

    def batch_key(self, request: dict) -> Hashable:
        """The smallest token bucket holding the request's budget."""
        budget = self._budget(request)
        i = bisect.bisect_left(TOKEN_BUCKETS, budget)
        return ("tokens", TOKEN_BUCKETS[i] if i < len(TOKEN_BUCKETS) else budget)

    # -- generation ----------------------------------------------------------------------------
    def _render(self, tm: TextModel, prompt: str) -> str:
        if tm.use_chat_template:
            return tm.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
        return prompt

    def _estimate(self, chunk: Sequence[dict]) -> int:
        per_token = self._kv_bytes_per_token or 0
        longest = max(len(r["prompt"]) // 2 + self._budget(r) for r in chunk)  # ~2 chars per token, pessimistic
        return 2 * per_token * len(chunk) * longest  # KV cache plus activations of the same order

    def run_inference(self, batch: Sequence[dict], model: TextModel) -> list[InferenceOutput]:
        outputs: list[InferenceOutput] = []
        for chunk in split_to_fit(batch, self.plan.max_batch, self._estimate, self.guard):
            if len(chunk) == 1 and not self.guard.fits(self._estimate(chunk)):
                outputs.append(InferenceOutput(error="insufficient_device_memory", retryable=True))
                continue
            outputs.extend(self._generate(chunk, model))
        return outputs

    def _generate(self, chunk: Sequence[dict], tm: TextModel) -> list[InferenceOutput]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        tok = tm.tokenizer
        texts = [self._render(tm, r["prompt"]) for r in chunk]
        enc = tok(
            texts, return_tensors="pt", padding=True, truncation=True,
            max_length=self.max_prompt_tokens, add_special_tokens=not tm.use_chat_template,
        ).to(self.plan.device)
        budgets = [self._budget(r) for r in chunk]
        prompt_len = enc["input_ids"].shape[1]
        eos_id = tm.eos_ids[0] if tm.eos_ids else tok.eos_token_id
        sampler = PerRowSampler(
            temperatures=[float(param(r, "temperature", self.default_temperature)) for r in chunk],
            top_ps=[float(param(r, "top_p", self.default_top_p)) for r in chunk],
            seeds=[stable_seed(r) for r in chunk],
            budgets=budgets, prompt_len=prompt_len, eos_id=eos_id, device=self.plan.device,
        )
        config = GenerationConfig(
            max_new_tokens=max(budgets), do_sample=False, num_beams=1,
            pad_token_id=tok.pad_token_id, eos_token_id=list(tm.eos_ids) or None,
        )
        started = time.perf_counter()
        with torch.inference_mode():
            out = tm.model.generate(
                **enc, generation_config=config, logits_processor=LogitsProcessorList([sampler]),
            )
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        results = []
        for i, request in enumerate(chunk):
            ids = out[i, prompt_len:].tolist()
            cut = len(ids)
            for j, t in enumerate(ids):
                if t in tm.eos_ids:
                    cut = j
                    break
            ids = ids[: min(cut, budgets[i])]
            results.append(InferenceOutput(
                text=tok.decode(ids, skip_special_tokens=True), content_type="text/plain",
                tokens_out=len(ids), extra={"batch_generate_ms": round(elapsed_ms, 1)},
            ))
        return results

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.plan.describe(), "model_path": self.model_path,
                "max_new_tokens": self.max_new_tokens}
