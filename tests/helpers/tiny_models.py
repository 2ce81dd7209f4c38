"""Tiny randomly initialised models built in-process, for fast tests.

They exercise the real load/generate code paths (save_pretrained directories, chat
templates, padding, schedulers) in about a second; their output is noise by design.
"""

from __future__ import annotations

from pathlib import Path

_CORPUS = [
    "a red circle on a grey background",
    "write a short poem about the sea and the wind",
    "the quick brown fox jumps over the lazy dog",
    "event streaming moves prompts through kafka topics to model workers",
    "summarise the following text in one sentence please",
    "hello world, how are you today?",
] * 20

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer(vocab_size: int = 384, pad_token: bool = False):
    """A byte-level BPE tokenizer trained on a few sentences, with a chat template and no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>" if pad_token else None,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_text_model(out: Path | str, seed: int = 0, hidden: int = 64, layers: int = 4) -> Path:
    """Save a ~170k-parameter Llama with the tiny tokenizer to `out`.

    The EOS embedding row is zeroed (weights are tied) so greedy decoding never stops
    early and tests can check that the token limit, not chance, ends generation.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.get_input_embeddings().weight[tokenizer.eos_token_id].zero_()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def build_tiny_image_pipeline(out: Path | str, seed: int = 0, sample_size: int = 16) -> Path:
    """An untrained class-conditioned UNet in the layout of `shapes_unet` (smaller), as training saves it."""
    import torch

    from inference_workers.models.shapes_unet import build_scheduler, build_unet, save_pipeline

    torch.manual_seed(seed)
    unet = build_unet(sample_size=sample_size, channels=(8, 16))
    return save_pipeline(unet, build_scheduler(), Path(out))
