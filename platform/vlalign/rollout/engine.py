"""The embedded generation engine: n sampled responses per prompt with transformers' `generate`.

One `GenerationEngine.rollout(prompts, step)` call:

1. tokenizes the P prompts with the family's chat template, left-padded ([P, L]);
2. runs the vision tower ONCE per prompt (`vlalign.methods.forward.encode_images`) and gives
   its features to every one of the prompt's n rows through transformers' ``mm_encoder_outputs``
   (transformers >= 5 `generate` accepts precomputed features for LLaVA, Qwen2-VL and Idefics3:
   without ``pixel_values`` it skips its own encoding; a test checks the vision tower runs once);
3. generates the N = P * n rows in one batched `generate` (KV cache), rows of a prompt
   consecutive (prompt p owns rows p*n .. p*n+n-1, the layout `vlalign.losses.policy` expects),
   with the LoRA adapters merged into the base weights for the call (`vlalign.rollout.merging`:
   the exact base weights are restored after; `SamplingSettings.merge_adapters`). The prompts
   are prefilled once each, not once per sample: one forward of the P prompts (all but their
   last token, images included) fills a KV cache that is repeated n times, and `generate`
   continues the N rows from it (`SamplingSettings.share_prefill`; same samples, tested);
4. lays the result out as the trainer will read it (right padding: prompt, response, padding) and
   computes the old policy's per-token log-probs in ONE forward with the same features, each
   prompt's n rows packed into one row (`rollout_logps`, `vlalign.rollout.group_packing`), the
   forward the trainer runs on the same rows, so its update starts at ratio 1.

Seeding. Sampling does not use the global RNG: `RowSampler`, a logits processor, draws each
row's token with that row's own `torch.Generator`, seeded from (seed, step, prompt key, sample
index) by `sample_seed`. A resumed run regenerates the same samples for the same step and
prompts, and a prompt's samples do not depend on which other prompts share its batch (up to
float rounding of the logits under different padding). `generate` itself runs greedy over the
processor's output, which keeps only the drawn token.

Log-probs are those of the model itself (temperature 1, no top-p): the importance ratio
pi_theta / pi_old compares the same distribution on both sides; sampling may be tempered.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import TopPLogitsWarper
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vlalign.errors import DataError
from vlalign.logprobs import token_logprobs_from_logits
from vlalign.losses.policy import entropy_from_logits
from vlalign.models.families import Family, family_of
from vlalign.models.families.base import attention_implementation
from vlalign.models.inputs import IGNORE_INDEX, ChatEncoder
from vlalign.models.pair_inputs import IMAGE_KEYS, PIXEL_KEYS, encode_images, image_inputs
from vlalign.models.unwrap import unwrap
from vlalign.rollout.group_packing import can_pack, groups_of, pack_groups, packed_token_logps
from vlalign.rollout.merging import merged_adapters

log = logging.getLogger("vlalign.rollout")
_UNPACKED_WARNED: set[str] = set()


@dataclass(frozen=True)
class SamplingSettings:
    """How responses are sampled (the recipe's grpo section maps onto this)."""

    n: int = 4  # samples per prompt (the group size G)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    seed: int = 0
    logprob_chunk: int = 1024  # positions per chunk of the log-prob pass
    # The sampling policy's log-probs in one extra forward. An update that is exactly on policy
    # (one epoch, the whole rollout in one micro-batch) does not need them: its old log-probs
    # are its own, detached (ratio 1), so the caller may skip the pass (old_logps is then None).
    old_logps: bool = True
    # Generate with the LoRA adapters merged into the base weights (restored exactly after:
    # `vlalign.rollout.merging`); the old-log-prob pass runs on the unmerged model, as the
    # trainer's forward does. Off under ZeRO-3 (the caller's choice).
    merge_adapters: bool = True
    # The old-log-prob pass packs each prompt's n rows into one (`rollout_logps`).
    pack_groups: bool = True
    # `generate` continues n rows from one prefill of each prompt (`_shared_prefill`).
    share_prefill: bool = True


def sample_seed(seed: int, step: int, key: str, index: int) -> int:
    """A 63-bit seed for sample ``index`` of prompt ``key`` at ``step`` (stable across runs)."""
    digest = hashlib.blake2b(f"{seed}\x1f{step}\x1f{key}\x1f{index}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") & ((1 << 63) - 1)


class RowSampler(LogitsProcessor):
    """Temperature, top-p, then one draw per row with the row's own generator (inverse CDF: the
    first token whose cumulative probability exceeds u x total, u uniform in [0, 1)).

    scores: [N, V] -> [N, V] with 0 at the drawn token and -inf elsewhere, so greedy decoding
    keeps exactly the draw. ``seeds``: [N] ints; one `torch.Generator` per row, created lazily
    on the scores' device. ``banned``: token ids never drawn (image/video placeholders: a
    sampled placeholder would have no features behind it in the log-prob forward).
    """

    def __init__(
        self, seeds: Sequence[int], temperature: float, top_p: float, banned: Sequence[int] = ()
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.seeds = list(seeds)
        self.banned = sorted(set(banned))
        self.temperature = temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None
        self.generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.generators is None:
            self.generators = [
                torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds
            ]
        x = scores.float() / self.temperature
        if self.banned:
            x[:, self.banned] = float("-inf")
        if self.top_p is not None:
            x = self.top_p(input_ids, x)
        probs = torch.softmax(x, dim=-1)
        # Inverse-CDF draw: one uniform per row from the row's generator, then one batched
        # search (a loop of N torch.multinomial calls cost ~9x more per step on CPU).
        u = torch.cat([torch.rand(1, generator=g, device=g.device) for g in self.generators])
        cdf = probs.cumsum(dim=-1)  # [N, V]
        drawn = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True)  # [N, 1]
        drawn = drawn.clamp(max=probs.shape[-1] - 1)
        # u * total rounding up to the total could land past the last drawable token
        last = (probs > 0).long().cumsum(-1).argmax(dim=-1, keepdim=True)  # last nonzero
        drawn = torch.where(probs.gather(1, drawn) > 0, drawn, last)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, drawn, 0.0)


@dataclass
class Rollout:
    """N = P * n sampled responses in the trainer's layout (right padding). Shapes:

    input_ids, attention_mask, labels: [N, T] (labels -100 except on response tokens, the
    end-of-sequence token included); response_mask: [N, T] bool (labels != -100);
    old_logps: [N, T] float32, label-aligned (``old_logps[i, t]`` scores ``input_ids[i, t]``;
    0 off the response); prompt_index: [N] (row -> prompt); response_lengths: [N];
    truncated: [N] bool (no end-of-sequence within max_new_tokens); texts: N decoded responses.
    features: per-PROMPT image features (P prompts' images; ``image_counts[p]`` entries of
    ``pooler_output`` per prompt), reusable for the trainer's and the reference's forwards
    (`forward_kwargs`, `select`) while the vision path is frozen
    (`vlalign.methods.forward.vision_is_trainable` False): they were computed without grad and
    with the rollout's weights. prompt_images: per-prompt, per-image tensors the LM reads besides
    the features (Qwen2-VL's image_grid_thw [images, 3]); mm_token_type_ids: [N, T] or None.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    response_mask: Tensor
    old_logps: Tensor | None  # None when the caller skipped the pass (SamplingSettings)
    prompt_index: Tensor
    response_lengths: Tensor
    truncated: Tensor
    texts: list[str]
    n: int
    features: BaseModelOutputWithPooling | None = None
    image_counts: list[int] = field(default_factory=list)
    prompt_images: dict[str, Tensor] = field(default_factory=dict)
    mm_token_type_ids: Tensor | None = None

    def forward_kwargs(
        self, rows: Sequence[int] | Tensor | None = None, features: bool = True
    ) -> dict:
        """Model kwargs carrying the images of ``rows`` (default: all N rows, in order);
        ``features=False`` leaves the image features out (the LM-side tensors only)."""
        rows = range(self.input_ids.shape[0]) if rows is None else [int(r) for r in rows]
        owners = [int(self.prompt_index[r]) for r in rows]
        extra: dict = {}
        if self.features is not None and features:
            extra["mm_encoder_outputs"] = {
                "image": features_for_rows(self.features, self.image_counts, owners)
            }
        for k, v in self.prompt_images.items():
            parts = v.split(self.image_counts)
            extra[k] = torch.cat([parts[p] for p in owners])
        if self.mm_token_type_ids is not None:
            extra["mm_token_type_ids"] = self.mm_token_type_ids[list(rows)]
        return extra

    def select(self, rows: Sequence[int] | Tensor) -> dict:
        """A mini-batch of rows for the policy update: input_ids, attention_mask, labels,
        response_mask, old_logps [k, T] and ``extra`` (their images, `forward_kwargs`)."""
        idx = [int(r) for r in rows]
        return {
            "input_ids": self.input_ids[idx],
            "attention_mask": self.attention_mask[idx],
            "labels": self.labels[idx],
            "response_mask": self.response_mask[idx],
            "old_logps": None if self.old_logps is None else self.old_logps[idx],
            "extra": self.forward_kwargs(idx),
        }


def features_for_rows(
    features: BaseModelOutputWithPooling, counts: Sequence[int], owners: Sequence[int]
) -> BaseModelOutputWithPooling:
    """Per-prompt features -> the features of rows whose prompts are ``owners`` (in order).

    counts: ``pooler_output`` entries per prompt (`split_by_prompt`). pooler_output keeps its
    type (list/tuple of [k, H] or a stacked tensor); entries are shared, not recomputed.
    """
    po = features.pooler_output
    entries = list(po)
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + c)
    out = [e for p in owners for e in entries[starts[p] : starts[p + 1]]]
    if isinstance(po, Tensor):
        return BaseModelOutputWithPooling(pooler_output=torch.stack(out))
    return BaseModelOutputWithPooling(pooler_output=tuple(out) if isinstance(po, tuple) else out)


def split_by_prompt(
    features: BaseModelOutputWithPooling | None, prompt_ids: Tensor | None, image_token_id: int
) -> list[int]:
    """How many entries of ``features.pooler_output`` belong to each prompt, in order.

    Entries are matched to prompts by cumulative image-token counts, as transformers'
    `_expand_multimodal_outputs` does: an entry of k rows feeds k placeholder tokens.
    """
    if features is None or prompt_ids is None:
        return []
    po = features.pooler_output
    entry_tokens = [len(e) for e in po]
    per_prompt = (prompt_ids == image_token_id).sum(-1).tolist()
    counts, i = [], 0
    for need in per_prompt:
        got = k = 0
        while got < need:
            got += entry_tokens[i + k]
            k += 1
        if got != need:
            raise DataError(f"image features do not split by prompt ({got} != {need} tokens)")
        counts.append(k)
        i += k
    return counts


def expand_features(
    features: BaseModelOutputWithPooling, counts: Sequence[int], n: int
) -> BaseModelOutputWithPooling:
    """Per-prompt features -> per-row features: prompt p's entries repeated n times in a row."""
    return features_for_rows(features, counts, [p for p in range(len(counts)) for _ in range(n)])


def produces_mm_token_types(encoder: ChatEncoder) -> bool:
    """Does the family's processor return mm_token_type_ids (Qwen2-VL's M-RoPE needs it)?"""
    cached = getattr(encoder, "_vlalign_mm_types", None)
    if cached is None:
        out = encoder.processor(text=[encoder.prompt_text("x", 0)], return_tensors="pt")
        cached = "mm_token_type_ids" in out
        encoder._vlalign_mm_types = cached
    return cached


def _first_scored(labels: Tensor) -> int:
    scored = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    return int(scored[0]) if len(scored) else labels.shape[1] - 1


def token_forward(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    extra: dict,
    chunk_size: int = 1024,
    entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Per-token response log-probs [N, T] float32, label-aligned (`vlalign.logprobs`).

    input_ids, attention_mask, labels: [N, T] right-padded. Logits are computed only from the
    position before the first scored label on, and log-probs chunk by chunk over the vocabulary.
    Differentiable when called with grad enabled (the trainer's new log-probs).
    ``entropy=True`` also returns the exact entropy of the distribution each response token was
    predicted from ([N, T] float32, detached, label-aligned, 0 off the response), for reporting.
    """
    start = max(0, _first_scored(labels) - 1)
    keep = torch.arange(start, input_ids.shape[1], device=input_ids.device) if start else 0
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        logits_to_keep=keep,
        use_cache=False,
        **extra,
    )
    lp = F.pad(token_logprobs_from_logits(out.logits, labels[:, start:], chunk_size), (start, 0))
    if not entropy:
        return lp
    ent = F.pad(entropy_from_logits(out.logits, chunk_size)[:, :-1], (start + 1, 0))
    return lp, ent * (labels != IGNORE_INDEX).to(ent.dtype)


def rollout_logps(
    model: torch.nn.Module,
    ro: Rollout,
    rows: Sequence[int],
    chunk_size: int = 1024,
    features: BaseModelOutputWithPooling | None = None,
    pack: bool = True,
) -> Tensor:
    """Token log-probs [M, T] of the rollout's ``rows`` under ``model`` (label-aligned, float32;
    differentiable when called with grad enabled).

    pack (and an attention implementation that takes a dense mask, `group_packing.can_pack`):
    one forward of one packed row per prompt, [prompt, its rows' responses]
    (`vlalign.rollout.group_packing`): the prompt runs once per group instead of once per row,
    with the same log-probs as the unshared forward. Otherwise `token_forward` on the rows.
    ``features``: per-prompt image features to use instead of the rollout's (a trainable vision
    path re-encodes them with grad).
    """
    rows = [int(r) for r in rows]
    owners = [int(ro.prompt_index[r]) for r in rows]
    if pack and not can_pack(model):
        impl = str(attention_implementation(unwrap(model)))
        if impl not in _UNPACKED_WARNED:
            _UNPACKED_WARNED.add(impl)
            log.warning(
                "method.pack_groups: attention implementation %r takes no dense 4D mask; "
                "log-probs run one row per sample (load the model with sdpa or eager to pack)",
                impl,
            )
        pack = False
    if not pack:
        extra = ro.forward_kwargs(rows)
        if features is not None:
            extra["mm_encoder_outputs"] = {
                "image": features_for_rows(features, ro.image_counts, owners)
            }
        return token_forward(
            model, ro.input_ids[rows], ro.attention_mask[rows], ro.labels[rows], extra, chunk_size
        )
    groups = groups_of(owners)
    leaders = [rows[ms[0]] for ms in groups]
    lm_images = {
        k: v
        for k, v in ro.forward_kwargs(rows, features=False).items()
        if k in IMAGE_KEYS and k not in PIXEL_KEYS
    }
    packed = pack_groups(
        family_of(unwrap(model)) or Family(),
        unwrap(model),
        ro.input_ids[rows],
        ro.attention_mask[rows],
        ro.response_lengths[rows],
        groups,
        pad_id=0,
        row_images=lm_images,
        token_types=None if ro.mm_token_type_ids is None else ro.mm_token_type_ids[rows],
    )
    group_extra = ro.forward_kwargs(leaders)
    group_extra.pop("mm_token_type_ids", None)
    if features is not None:
        group_extra["mm_encoder_outputs"] = {
            "image": features_for_rows(features, ro.image_counts, [owners[ms[0]] for ms in groups])
        }
    return packed_token_logps(
        model,
        packed,
        group_extra,
        (len(rows), ro.input_ids.shape[1]),
        chunk_size,
        token_type_key="mm_token_type_ids",
    )


def _eos_ids(model: torch.nn.Module, tokenizer) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, list | tuple) else {int(eos)}


class GenerationEngine:
    """Samples n responses per prompt from ``model`` (a transformers VLM, PEFT-wrapped or not).

    prompts given to `rollout` are decoded samples (dicts with "key", "prompt", "images": list of
    PIL images; other keys are ignored). ``max_length`` bounds prompt tokens (image tokens
    included); longer prompts are a `DataError` naming the sample.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor,
        family: str,
        settings: SamplingSettings,
        max_length: int = 512,
    ) -> None:
        self.model = model
        self.encoder = ChatEncoder(processor, family, max_length)
        self.settings = settings
        self.tokenizer = self.encoder.tokenizer
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.eos = _eos_ids(model, self.tokenizer)

    def placeholder_ids(self) -> list[int]:
        """Image/video placeholder token ids of the model (never sampled)."""
        ids = {self.encoder.image_token_id}
        cfg = getattr(self.model, "config", None)
        for attr in ("image_token_id", "image_token_index", "video_token_id"):
            v = getattr(cfg, attr, None)
            if isinstance(v, int) and v >= 0:
                ids.add(v)
        return sorted(ids)

    # -- inputs --------------------------------------------------------------------------
    def prompt_batch(self, prompts: Sequence[dict]) -> dict[str, Tensor]:
        """Chat-templated prompts, left-padded: input_ids/attention_mask [P, L] + image tensors."""
        enc = self.encoder
        texts = [enc.prompt_text(p["prompt"], len(p.get("images") or [])) for p in prompts]
        images = [list(p.get("images") or []) for p in prompts]
        kwargs: dict = dict(enc.model_family.prompt_kwargs)
        if any(images):
            kwargs["images"] = enc.model_family.processor_images(images)
        old_side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            out = enc.processor(text=texts, return_tensors="pt", padding=True, **kwargs)
        finally:
            self.tokenizer.padding_side = old_side
        for p, n in zip(prompts, out["attention_mask"].sum(-1).tolist(), strict=True):
            if n > enc.max_length:
                raise DataError(
                    f"sample {p.get('key', '?')}: prompt is {n} tokens (with image tokens) > "
                    f"data.max_length {enc.max_length}"
                )
        return {k: v for k, v in out.items() if isinstance(v, Tensor)}

    # -- rollout -------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, prompts: Sequence[dict], step: int) -> Rollout:
        """n samples for each prompt, their trainer-layout batch and old-policy log-probs."""
        s = self.settings
        model = self.model
        was_training = model.training
        model.eval()
        try:
            return self._rollout(model, prompts, step, s)
        finally:
            model.train(was_training)

    def _rollout(self, model, prompts: Sequence[dict], step: int, s: SamplingSettings) -> Rollout:
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in self.prompt_batch(prompts).items()}
        P, n = len(prompts), s.n
        images = image_inputs(batch)
        features = encode_images(model, images) if images else None
        image_id = self.encoder.image_token_id
        counts = split_by_prompt(features, batch["input_ids"], image_id)

        def rows(x: Tensor) -> Tensor:
            return x.repeat_interleave(n, dim=0)

        gen_in = {
            "input_ids": rows(batch["input_ids"]),
            "attention_mask": rows(batch["attention_mask"]),
        }
        share = s.share_prefill and n > 1 and self._can_share_prefill(batch)
        # Per-image tensors the LM reads besides the features (Qwen2-VL's image_grid_thw: one
        # row per image): each prompt's group repeated n times, like the features. A shared
        # prefill holds the images in its cache: generate then needs neither.
        lm_images = {
            k: torch.cat([g for g in v.split(counts) for _ in range(n)])
            for k, v in images.items()
            if k not in PIXEL_KEYS and not share
        }
        if "mm_token_type_ids" in batch:
            gen_in["mm_token_type_ids"] = rows(batch["mm_token_type_ids"])
        if features is not None and not share:
            gen_in["mm_encoder_outputs"] = {"image": expand_features(features, counts, n)}
        seeds = [
            sample_seed(s.seed, step, str(p.get("key", i)), j)
            for i, p in enumerate(prompts)
            for j in range(n)
        ]
        sampler = RowSampler(seeds, s.temperature, s.top_p, self.placeholder_ids())
        with merged_adapters(model, s.merge_adapters):
            if share:
                gen_in["cache"] = self._shared_prefill(model, batch, images, features, counts, n)
            seqs = model.generate(
                **gen_in,
                **lm_images,
                max_new_tokens=s.max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                logits_processor=LogitsProcessorList([sampler]),
                pad_token_id=self.pad_id,
            )
        L = batch["input_ids"].shape[1]
        new = seqs[:, L:]  # [N, R]
        layout = self._layout(
            gen_in["input_ids"], gen_in["attention_mask"], new, gen_in.get("mm_token_type_ids")
        )
        rollout = Rollout(
            input_ids=layout["input_ids"],
            attention_mask=layout["attention_mask"],
            labels=layout["labels"],
            response_mask=layout["labels"] != IGNORE_INDEX,
            old_logps=torch.empty(0),
            prompt_index=torch.arange(P, device=device).repeat_interleave(n),
            response_lengths=layout["response_lengths"],
            truncated=layout["truncated"],
            texts=layout["texts"],
            n=n,
            features=features,
            image_counts=counts,
            prompt_images={k: v for k, v in images.items() if k not in PIXEL_KEYS},
            mm_token_type_ids=layout.get("mm_token_type_ids"),
        )
        if s.old_logps:
            rollout.old_logps = rollout_logps(
                model, rollout, range(P * n), s.logprob_chunk, pack=s.pack_groups
            )
        else:
            rollout.old_logps = None
        return rollout

    def _can_share_prefill(self, batch: dict[str, Tensor]) -> bool:
        """Every prompt ends in a text token (the images lie inside the cached part)."""
        return not bool(
            torch.isin(
                batch["input_ids"][:, -1],
                torch.tensor(self.placeholder_ids(), device=batch["input_ids"].device),
            ).any()
        )

    def _shared_prefill(
        self,
        model: torch.nn.Module,
        batch: dict[str, Tensor],
        images: dict[str, Tensor],
        features: BaseModelOutputWithPooling | None,
        counts: list[int],
        n: int,
    ):
        """The KV cache of the P prompts but their last token, computed ONCE per prompt and
        repeated for its n rows ([P, L-1] -> [N, L-1] per layer). `generate` continues from it
        (transformers feeds only the uncached last token), so a prompt's image and text run
        through the LM once instead of n times. Positions as `generate` makes them: from the
        left-padded attention mask (1-D families); M-RoPE families compute theirs and the family
        repeats the per-row state `generate` reads next (`Family.repeat_generation_state`)."""
        ids, mask = batch["input_ids"][:, :-1], batch["attention_mask"][:, :-1]
        kwargs: dict = {k: v for k, v in images.items() if k not in PIXEL_KEYS}
        if features is not None:  # each prompt's own entries, through the one per-row mapping
            prompts = list(range(len(counts)))
            kwargs["mm_encoder_outputs"] = {"image": features_for_rows(features, counts, prompts)}
        if "mm_token_type_ids" in batch:
            kwargs["mm_token_type_ids"] = batch["mm_token_type_ids"][:, :-1]
        family = self.encoder.model_family
        # M-RoPE models compute theirs (and keep the rope deltas); 1-D: the left padding reads
        # position 0, as in generate's own prefill
        if not family.mrope:
            kwargs["position_ids"] = family.position_ids(unwrap(model), ids, mask, {}, None)
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1, **kwargs)
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        cache.batch_repeat_interleave(n)
        family.repeat_generation_state(unwrap(model), n)
        return cache

    def _layout(
        self, prompt_ids: Tensor, prompt_mask: Tensor, new: Tensor, mm_types: Tensor | None
    ) -> dict:
        """Left-padded prompts [N, L] + generated [N, R] -> right-padded [N, T] batch."""
        rows_ids, rows_labels, rows_types, lengths, truncated, texts = [], [], [], [], [], []
        for i in range(new.shape[0]):
            p = prompt_ids[i][prompt_mask[i].bool()]
            gen = new[i].tolist()
            n_resp = len(gen)
            cut = True
            for j, t in enumerate(gen):
                if t in self.eos:
                    n_resp, cut = j + 1, False  # the end-of-sequence token is a response token
                    break
            resp = new[i, :n_resp]
            rows_ids.append(torch.cat([p, resp]))
            rows_labels.append(torch.cat([torch.full_like(p, IGNORE_INDEX), resp]))
            if mm_types is not None:
                t = mm_types[i][prompt_mask[i].bool()]
                rows_types.append(torch.cat([t, torch.zeros_like(resp)]))
            lengths.append(n_resp)
            truncated.append(cut)
            texts.append(
                self.tokenizer.decode(gen[: n_resp - (0 if cut else 1)], skip_special_tokens=True)
            )
        T = max(len(r) for r in rows_ids)

        def pad(rows: list[Tensor], value: int) -> Tensor:
            return torch.stack([F.pad(r, (0, T - len(r)), value=value) for r in rows])

        ids = pad(rows_ids, self.pad_id)
        mask = pad([torch.ones_like(r) for r in rows_ids], 0)
        out = {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": pad(rows_labels, IGNORE_INDEX),
            "response_lengths": torch.tensor(lengths, device=ids.device),
            "truncated": torch.tensor(truncated, device=ids.device),
            "texts": [t.strip() for t in texts],
        }
        if rows_types:
            out["mm_token_type_ids"] = pad(rows_types, 0)
        return out
