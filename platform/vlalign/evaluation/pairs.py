"""Scoring preference pairs with a model: summed response log-probs, implicit rewards.

Each answer is scored in its own forward (input_ids [1, T]), so a pair's numbers never depend
on what else is in a batch or on which worker scores it: the scorecard stays identical for any
number of workers. The policy's implicit reward of an answer is
log pi(y|x) - log pi_ref(y|x), with the reference = the same PEFT model, adapter disabled.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vlalign.evaluation.metrics import implicit_rewards
from vlalign.logprobs import sequence_logprobs
from vlalign.models.inputs import ChatEncoder


def has_pair(sample: dict) -> bool:
    """True when an eval sample carries a preference pair (chosen and rejected answers)."""
    return bool(sample.get("chosen")) and bool(sample.get("rejected"))


def pair_logps(
    model, encoder: ChatEncoder, pairs: Sequence[dict], chunk_size: int = 1024
) -> list[tuple[float, float]]:
    """(summed log-prob of chosen, of rejected) per pair; logits [1, T, V] per answer."""
    device = next(model.parameters()).device
    out: list[tuple[float, float]] = []
    for s in pairs:
        ex = encoder.pair_example(
            list(s.get("images") or []), s["prompt"], s["chosen"], s["rejected"]
        )
        images = {k: v.to(device) for k, v in ex["image_inputs"].items()}
        sums = []
        for side in ("chosen", "rejected"):
            ids = ex[f"{side}_input_ids"].unsqueeze(0).to(device)  # [1, T]
            labels = ex[f"{side}_labels"].unsqueeze(0).to(device)  # [1, T]
            with torch.inference_mode():
                logits = model(
                    input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, **images
                ).logits
            sums.append(float(sequence_logprobs(logits, labels, chunk_size).sum[0]))
        out.append((sums[0], sums[1]))
    return out


def policy_implicit_rewards(
    model, encoder: ChatEncoder, pairs: Sequence[dict], chunk_size: int = 1024
) -> list[tuple[float, float]]:
    """Implicit rewards (chosen, rejected) of a PEFT policy against itself with the adapter off."""

    def policy(ps):
        return pair_logps(model, encoder, ps, chunk_size)

    def reference(ps):
        with model.disable_adapter():
            return pair_logps(model, encoder, ps, chunk_size)

    return implicit_rewards(pairs, policy, reference)
