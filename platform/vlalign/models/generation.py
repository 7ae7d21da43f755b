"""Batched answer generation for decoder-only VLMs (left padding, only new tokens decoded).

Prompts are chat-templated with `ChatEncoder.prompt_text` (the same text `encode_prompt`
tokenizes), tokenized in batches by the processor with the tokenizer's `padding_side="left"`
so every prompt ends at the last column and generation appends to all of them at once.
`generate()` receives the attention mask; transformers derives position ids (and Qwen2-VL's
rope indices) from it, so a left-padded prompt decodes like the same prompt alone. Only the
new tokens [B, T_new] are decoded, with special tokens skipped.

Greedy decoding (the default) is deterministic and, as a test checks, independent of the batch
size. Sampled decoding is seeded per batch (`seed + first index of the batch`) and therefore
depends on how prompts are grouped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from vlalign.errors import DataError
from vlalign.models.inputs import ChatEncoder


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings (from recipe.eval)."""

    max_new_tokens: int = 24
    batch_size: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    @classmethod
    def from_eval_config(cls, ev, batch_size: int | None = None) -> GenerationSettings:
        """From a recipe's `eval` section; `batch_size` overrides its batch size."""
        return cls(
            max_new_tokens=ev.max_new_tokens,
            batch_size=batch_size or ev.batch_size,
            do_sample=ev.do_sample,
            temperature=ev.temperature,
            top_p=ev.top_p,
        )


@dataclass(frozen=True)
class Generation:
    """One answer: its text and how many tokens were generated before end-of-sequence."""

    text: str
    n_tokens: int


def _eos_ids(model) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, list | tuple) else {int(eos)}


def _batch_inputs(encoder: ChatEncoder, samples: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Tokenize a batch of prompts with left padding. input_ids/attention_mask: [B, P_max]."""
    texts = [encoder.prompt_text(s["prompt"], len(s.get("images") or [])) for s in samples]
    images = [list(s.get("images") or []) for s in samples]
    kwargs: dict = dict(encoder.model_family.prompt_kwargs)
    if any(images):
        kwargs["images"] = encoder.model_family.processor_images(images)
    tok = encoder.tokenizer
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        enc = encoder.processor(text=texts, return_tensors="pt", padding=True, **kwargs)
    finally:
        tok.padding_side = old_side
    lengths = enc["attention_mask"].sum(-1)
    for s, n in zip(samples, lengths.tolist(), strict=True):
        if n > encoder.max_length:
            raise DataError(
                f"sample {s.get('key', '?')} (shard {s.get('shard', '?')}): prompt is {n} tokens "
                f"(with image tokens) > data.max_length {encoder.max_length}"
            )
    return dict(enc)


def generate(
    model,
    encoder: ChatEncoder,
    samples: Sequence[dict],
    settings: GenerationSettings,
    progress: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Answers for `samples` (dicts with "prompt" and "images"), in order.

    `progress(n)` is called after each batch with the number of prompts it held.
    """
    model.eval()
    device = next(model.parameters()).device
    eos = _eos_ids(model)
    pad_id = encoder.tokenizer.pad_token_id
    out: list[Generation] = []
    for start in range(0, len(samples), settings.batch_size):
        batch = samples[start : start + settings.batch_size]
        inputs = _batch_inputs(encoder, batch)
        inputs = {k: v.to(device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        gen_kw: dict = dict(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample)
        if settings.do_sample:
            gen_kw.update(temperature=settings.temperature, top_p=settings.top_p)
            torch.manual_seed(settings.seed + start)
        else:  # keep the checkpoint's sampling defaults from leaking in (and warning)
            gen_kw.update(temperature=None, top_p=None, top_k=None)
        if pad_id is not None:
            gen_kw["pad_token_id"] = pad_id
        with torch.inference_mode():
            seqs = model.generate(**inputs, **gen_kw)
        new = seqs[:, inputs["input_ids"].shape[1] :].cpu()  # [B, T_new]
        for row in new.tolist():
            n = len(row)
            for i, t in enumerate(row):
                if t in eos:
                    n = i
                    break
            text = encoder.tokenizer.decode(row[:n], skip_special_tokens=True)
            out.append(Generation(text=text.strip(), n_tokens=n))
        if progress is not None:
            progress(len(batch))
    return out
