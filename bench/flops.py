"""Model FLOPs of a DPO step and the device's measured bf16 matmul peak (for MFU).

FLOP formula (the issue's convention: the standard 6N-per-token count for the policy plus 2N
for the reference forward, counted as if nothing were shared):

    flops_per_pair = (6 + 2) * (N_lm * (T_chosen + T_rejected) + N_vision * 2 * patches_per_image)

- N_lm: language-model parameters that multiply activations: every LM parameter except the
  input token-embedding table (a lookup), with the LM head counted (once, even when tied).
- T_chosen, T_rejected: non-padding tokens of the pair's two unshared sequences, image tokens
  and the prompt included (so the prompt and image count twice per pair).
- N_vision: vision tower + projector parameters; patches_per_image: the positions the vision
  tower runs on (LLaVA/CLIP: (px/14)^2 + 1 CLS; Qwen2-VL: (px/14)^2 patches before the merger).
  The image counts once per sequence, i.e. twice per pair.
- 6N per token for the policy (forward 2N + backward 4N) and 2N for the reference forward. Not
  counted: attention score/value matmuls (the 12*L*d*T term), norms, activations, softmax.

This is a convention, not the work done: with LoRA, frozen weights get no weight gradient (the
backward is ~2N, not 4N), the frozen vision tower runs forward only, and vlalign computes the
prompt once per pair (packed prefix), the vision tower once per pair and no reference forward
(precomputed). `lora_aware_flops_per_pair` gives the matmul work actually needed by the unshared
computation (policy 4N, vision 2N, reference 2N) for comparison.

`measure_bf16_peak` times large square matmuls and reports the best sustained rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

FORMULA = (
    "flops/pair = (6 + 2) * (N_lm * (T_chosen + T_rejected) + N_vision * 2 * patches_per_image); "
    "N_lm = LM params except the input embedding (LM head counted), N_vision = vision tower + "
    "projector; T = non-pad tokens of each unshared sequence incl. prompt and image tokens; "
    "6N policy (fwd+bwd) + 2N reference fwd, nothing shared; attention score FLOPs not counted"
)


@dataclass
class ParamCounts:
    """Parameter counts of a VLM split the way the FLOP formula needs them."""

    lm: int  # language model incl. LM head, excl. input embedding
    vision: int  # vision tower + projector
    embedding: int  # input token embedding (not counted in FLOPs)
    total: int


def count_params(model: torch.nn.Module) -> ParamCounts:
    """Split a (PEFT-wrapped or plain) VLM's base parameters into LM / vision / embedding.

    LoRA adapter parameters are excluded (they are not part of the model being counted).
    """
    from vlalign.models.lora import projector_prefix, vision_prefix
    from vlalign.models.unwrap import unwrap

    base = unwrap(model)
    prefixes = [p for p in (vision_prefix(base), projector_prefix(base)) if p]
    emb = base.get_input_embeddings().weight
    head = base.get_output_embeddings()
    head_w = head.weight if head is not None else None
    seen: set[int] = set()
    lm = vision = 0
    for name, p in base.named_parameters(remove_duplicate=False):
        if "lora_" in name or id(p) in seen:
            continue
        seen.add(id(p))
        if any(name.startswith(x + ".") for x in prefixes):
            vision += p.numel()
        elif p is not emb:
            lm += p.numel()
    tied = head_w is not None and head_w is emb
    embedding = emb.numel()
    if tied:  # the tied matrix is both a lookup and the LM head matmul: count it as the head
        lm += emb.numel()
    total = sum(p.numel() for p in {id(p): p for p in base.parameters()}.values())
    total -= sum(p.numel() for n, p in base.named_parameters() if "lora_" in n)
    return ParamCounts(lm=lm, vision=vision, embedding=embedding, total=total)


def patches_per_image(model: torch.nn.Module, batch: dict) -> float:
    """Positions the vision tower processes per image (per pair's image), from config and batch.

    LLaVA/CLIP: (H / patch)^2 + 1 CLS; Qwen2-VL: t*h*w patches of image_grid_thw (before the 2x2
    merger); Idefics3: real sub-images x (H / patch)^2.
    """
    from vlalign.models.unwrap import unwrap

    vcfg = unwrap(model).config.vision_config
    pv = batch.get("pixel_values")
    if pv is None:
        return 0.0
    if batch.get("image_grid_thw") is not None:
        grid = batch["image_grid_thw"]
        return float(grid.prod(dim=-1).sum()) / grid.shape[0]
    per = (pv.shape[-1] // vcfg.patch_size) ** 2
    if pv.dim() == 5:  # Idefics3: [B, N, 3, H, W] with a mask of the real sub-images
        real = batch["pixel_attention_mask"].flatten(2).any(dim=-1).sum()
        return float(real) * per / pv.shape[0]
    return float(per + 1)


def model_flops_per_pair(
    counts: ParamCounts, tokens_per_pair: float, patches: float, reference: bool = True
) -> float:
    """The issue's convention (see the module docstring): 6N policy + 2N reference, unshared."""
    per_pass = counts.lm * tokens_per_pair + counts.vision * 2 * patches
    return (6 + (2 if reference else 0)) * per_pass


def lora_aware_flops_per_pair(counts: ParamCounts, tokens_per_pair: float, patches: float) -> float:
    """Matmul work of the unshared LoRA computation: LM 4N policy + 2N reference, vision 2N x2."""
    return (4 + 2) * counts.lm * tokens_per_pair + (2 + 2) * counts.vision * 2 * patches


def measure_bf16_peak(
    device: str | torch.device, n: int = 8192, iters: int = 20, trials: int = 5
) -> dict:
    """Best sustained bf16 matmul rate of `device` in FLOP/s: [n, n] @ [n, n], timed.

    Each trial times `iters` back-to-back matmuls (after warm-up) with device synchronization;
    the best trial is the peak. On CPU it runs too (small n recommended) for testing.
    """
    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16, generator=g)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16, generator=g)
    out = torch.empty(n, n, device=dev, dtype=torch.bfloat16)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(3):
        torch.matmul(a, b, out=out)
    sync()
    rates = []
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(iters):
            torch.matmul(a, b, out=out)
        sync()
        rates.append(2 * n**3 * iters / (time.perf_counter() - start))
    return {"flops_per_s": max(rates), "trials": rates, "n": n, "iters": iters, "dtype": "bfloat16"}
