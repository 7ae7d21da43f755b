"""Scoring preference pairs with a model: implicit rewards of a policy, or a reward model's scores.

Each pair is scored in its own forward: chosen and rejected as one [2, T] batch with the image
encoded once (the training path, `methods.forward.pair_forward`), so a pair's numbers never
depend on what else is in a batch or on which worker scores it: the scorecard stays identical
for any number of workers. The policy's implicit reward of an answer is log pi(y|x) - log pi_ref(y|x):
the reference is the same PEFT model with its adapter disabled, or, for a fully fine-tuned
export, the base model it recorded. A reward model's score is its value head's output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vlalign.evaluation.metrics import implicit_rewards, reward_scores
from vlalign.models.inputs import ChatEncoder


def has_pair(sample: dict) -> bool:
    """True when an eval sample carries a preference pair (chosen and rejected answers)."""
    return bool(sample.get("chosen")) and bool(sample.get("rejected"))


def pair_logps(
    model, encoder: ChatEncoder, pairs: Sequence[dict], chunk_size: int = 1024
) -> list[tuple[float, float]]:
    """(summed log-prob of chosen, of rejected) per pair; one [2, T] forward per pair."""
    from data_pipeline.collate import collate_pairs
    from data_pipeline.transforms import encode_one
    from vlalign.methods.forward import PairOptions, pair_forward

    device = next(model.parameters()).device
    pad_id = encoder.tokenizer.pad_token_id
    opts = PairOptions(chunk_size=chunk_size)
    out: list[tuple[float, float]] = []
    for i, s in enumerate(pairs):
        sample = {"key": f"pair {i}", **s, "images": list(s.get("images") or [])}
        ex = encode_one(encoder, sample, "preference")  # as training encodes it
        batch = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v
            for k, v in collate_pairs([ex], pad_id).items()
        }
        with torch.inference_mode():
            chosen, rejected = pair_forward(model, batch, pad_id, opts)
        out.append((float(chosen.sum[0]), float(rejected.sum[0])))
    return out


def reward_model_scores(
    reward_model, encoder: ChatEncoder, pairs: Sequence[dict]
) -> list[tuple[float, float]]:
    """(reward of chosen, reward of rejected) per pair from a RewardModel (rewards [1] per answer)."""
    device = next(reward_model.parameters()).device
    out: list[tuple[float, float]] = []
    for s in pairs:
        ex = encoder.pair_example(
            list(s.get("images") or []), s["prompt"], s["chosen"], s["rejected"]
        )
        images = {k: v.to(device) for k, v in ex["image_inputs"].items()}
        scores = []
        for side in ("chosen", "rejected"):
            ids = ex[f"{side}_input_ids"].unsqueeze(0).to(device)  # [1, T]
            extra = {**images, **encoder.token_types(ids)}  # M-RoPE / image attention ids
            with torch.inference_mode():
                scores.append(float(reward_model(ids, torch.ones_like(ids), **extra)[0]))
        out.append((scores[0], scores[1]))
    return out


def score_pairs(
    loaded, encoder: ChatEncoder, pairs: Sequence[dict], chunk_size: int = 1024
) -> tuple[str | None, list[tuple[float, float]]]:
    """(pair kind, [(chosen, rejected)]) for a LoadedModel: "reward" for a reward model,
    "implicit" for a policy with a reference, (None, []) when there is nothing to compare to."""
    if not pairs:
        return pair_kind_of(loaded), []
    if loaded.reward_model is not None:
        return "reward", reward_scores(
            pairs, lambda ps: reward_model_scores(loaded.reward_model, encoder, ps)
        )
    if loaded.has_adapter:
        return "implicit", policy_implicit_rewards(loaded.model, encoder, pairs, chunk_size)
    if loaded.reference_model is not None:
        return "implicit", implicit_rewards(
            pairs,
            lambda ps: pair_logps(loaded.model, encoder, ps, chunk_size),
            lambda ps: pair_logps(loaded.reference_model, encoder, ps, chunk_size),
        )
    return None, []


def pair_kind_of(loaded) -> str | None:
    """The pair metric a loaded model supports: reward, implicit or None."""
    if loaded.reward_model is not None:
        return "reward"
    if loaded.has_adapter or loaded.reference_model is not None:
        return "implicit"
    return None


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
