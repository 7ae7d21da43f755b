"""Decoded sample -> model example: chat template -> processor -> label masks -> truncation.

The encoding is `vlalign.models.inputs.ChatEncoder`'s: labels are -100 on the prompt and every
image token, and truncation cuts the response tail (counted in `truncated`), never image
tokens. Examples (what `data_pipeline.collate` batches):

    sft:        {"key", "input_ids" [T], "labels" [T], "image_inputs" {name: tensor},
                 "prompt_len", "truncated", "n_image_tokens", [TT [T]]}
    preference: {"key", "chosen_input_ids" [Tc], "chosen_labels" [Tc], "rejected_input_ids" [Tr],
                 "rejected_labels" [Tr], "image_inputs", "prompt_len", "truncated",
                 "n_image_tokens", ["chosen_" TT [Tc], "rejected_" TT [Tr]],
                 ["chosen_safe", "rejected_safe" (bools from the record meta, when present)]}

`image_inputs` holds one sample's image tensors as the processor makes them, under the family's
`image_keys` (LLaVA, Gemma 3 pixel_values [n_img, 3, H, W]; Qwen2-VL pixel_values [patches, D] +
image_grid_thw [n_img, 3]; Idefics3 pixel_values [1, N, 3, H, W] + pixel_attention_mask
[1, N, H, W]).
TT, the per-token modality ids (1 on image tokens), is added for families whose LM takes them
under the family's `token_type_key` (Qwen2-VL: mm_token_type_ids; Gemma 3: token_type_ids).

Training kind "sft" reads SFT records (response) and preference / eval records (chosen as the
response); kind "preference" reads preference records and eval records that carry a pair;
kind "unpaired" (KTO) encodes them as pairs, and `collate_unpaired` splits each pair into a
desirable and an undesirable completion; kind "prompts" (online RL) keeps the decoded prompt,
images and meta of any record kind, unencoded.

`make_transform` maps one sample; `make_batch_transform` maps a list with one processor call
(several times faster per sample; a test checks it gives exactly the per-sample result).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from data_pipeline.skips import OnError, SkipCounter, check_policy, handle
from vlalign.errors import DataError
from vlalign.models.inputs import TEXT_KEYS, ChatEncoder, EncodedPrompt

TRAIN_KINDS = ("sft", "preference", "unpaired", "prompts")


def _where(sample: dict) -> str:
    return f"shard {sample.get('shard', '?')} key {sample.get('key', '?')!r}"


def texts_of(sample: dict, kind: str) -> tuple[str, ...]:
    """(response,) for sft or (chosen, rejected) for preference, from any record kind."""
    if kind == "sft":
        if sample.get("messages") and len(sample["messages"]) > 1:
            raise DataError(
                f"{_where(sample)}: multi-turn messages are not supported by the chat encoder "
                "(one user turn per sample)"
            )
        text = sample.get("response")
        if text is None:
            text = sample.get("chosen")
        if text is None:
            raise DataError(f"{_where(sample)}: no response or chosen text for SFT")
        return (text,)
    if kind in ("preference", "unpaired"):  # unpaired (KTO) splits each pair in the collate
        if sample.get("chosen") is None or sample.get("rejected") is None:
            raise DataError(f"{_where(sample)}: a preference example needs chosen and rejected")
        return (sample["chosen"], sample["rejected"])
    raise DataError(f"training kind must be one of {TRAIN_KINDS}, got {kind!r}")


_PROBE = "VLALIGNPROMPT"
_CHECKS = ("  What's <b>this</b>?\n{{ x }} {% y %}  ", "Ünïcödé — 中文 'quotes' \"dq\" \\ end")


def fast_prompt_text(encoder: ChatEncoder, prompt: str, n_images: int) -> str:
    """`encoder.prompt_text(prompt, n_images)` without re-rendering the chat template each time.

    The template is rendered once per image count with a probe prompt and split around it; the
    split is used only when it reproduces the full rendering exactly for awkward check prompts
    (whitespace, markup, template syntax, quotes, non-ASCII), otherwise the template renders.
    """
    cache = encoder.__dict__.setdefault("_vlalign_prompt_affixes", {})
    affixes = cache.get(n_images)
    if affixes is None:
        full = encoder.prompt_text(_PROBE, n_images)
        affixes = False
        if full.count(_PROBE) == 1:
            before, _, after = full.partition(_PROBE)
            if all(before + c + after == encoder.prompt_text(c, n_images) for c in _CHECKS):
                affixes = (before, after)
        cache[n_images] = affixes
    if affixes is False:
        return encoder.prompt_text(prompt, n_images)
    return affixes[0] + prompt + affixes[1]


def _finish(
    encoder: ChatEncoder,
    ex: dict,
    key: str,
    kind: str,
    prompt_ids: torch.Tensor,
    meta: dict | None = None,
) -> dict:
    ex["key"] = key
    if kind != "sft":  # per-response safety labels (meta chosen_safe / rejected_safe), if any
        for side in ("chosen_safe", "rejected_safe"):
            if isinstance((meta or {}).get(side), bool):
                ex[side] = meta[side]
    ex["n_image_tokens"] = int((prompt_ids == encoder.image_token_id).sum())
    for pre in ("",) if kind == "sft" else ("chosen_", "rejected_"):
        for k, v in encoder.token_types(ex[f"{pre}input_ids"]).items():
            ex[f"{pre}{k}"] = v
    return ex


def encode_one(encoder: ChatEncoder, sample: dict, kind: str) -> dict:
    """One example through ChatEncoder.sft_example / pair_example (DataError names the key)."""
    texts = texts_of(sample, kind)
    try:
        if kind == "sft":
            ex = encoder.sft_example(sample["images"], sample["prompt"], texts[0])
        else:
            ex = encoder.pair_example(sample["images"], sample["prompt"], texts[0], texts[1])
    except DataError as e:
        raise DataError(f"{_where(sample)}: {e}") from None
    except Exception as e:  # processor errors (image/token mismatches, bad sizes)
        raise DataError(f"{_where(sample)}: cannot encode ({e.__class__.__name__}: {e})") from None
    ids = ex["input_ids"] if kind == "sft" else ex["chosen_input_ids"]
    return _finish(encoder, ex, sample["key"], kind, ids[: ex["prompt_len"]], sample.get("meta"))


def make_transform(
    encoder: ChatEncoder,
    kind: str,
    *,
    on_error: OnError = "raise",
    skips: SkipCounter | None = None,
) -> Callable[[dict], dict | None]:
    """sample -> example, or None for a bad sample skipped under `on_error="skip"` (counted)."""
    check_policy(on_error)
    if kind not in TRAIN_KINDS:
        raise DataError(f"training kind must be one of {TRAIN_KINDS}, got {kind!r}")

    def transform(sample: dict) -> dict | None:
        try:
            return encode_one(encoder, sample, kind)
        except DataError as e:
            handle(e, on_error, skips)
            return None

    return transform


def _split_images(
    image_keys: tuple[str, ...], enc: dict, n_images: list[int]
) -> list[dict[str, torch.Tensor]] | None:
    """Per-sample image tensors out of one batched processor output (None: unknown layout)."""
    img = {k: v for k, v in enc.items() if k not in TEXT_KEYS}
    if not img:
        return [{} for _ in n_images]
    pv = img.get("pixel_values")
    if pv is None:
        return None
    out: list[dict[str, torch.Tensor]] = []
    if pv.dim() == 5:  # Idefics3: [B, N, 3, H, W] padded to the batch's max N sub-images
        mask = img.get("pixel_attention_mask")
        for i in range(len(n_images)):
            if mask is not None:
                real = mask[i].flatten(1).any(1)
            else:
                real = pv[i].flatten(1).any(1)
            n = int(real.sum())
            if not bool(real[:n].all()):
                return None
            d = {"pixel_values": pv[i : i + 1, :n]}
            if mask is not None:
                d["pixel_attention_mask"] = mask[i : i + 1, :n]
            extra = set(img) - {"pixel_values", "pixel_attention_mask"}
            if extra:
                return None
            out.append(d)
        return out
    if set(img) - set(image_keys):
        return None
    grid = img.get("image_grid_thw")
    if grid is not None:  # Qwen2-VL: patches of all images in order, [sum patches, D]
        per_image = grid.prod(-1).tolist()
        rows = [0]
        for n in per_image:
            rows.append(rows[-1] + int(n))
        if rows[-1] != pv.shape[0]:
            return None
    else:  # LLaVA: [sum images, 3, H, W]
        rows = list(range(pv.shape[0] + 1))
        if pv.shape[0] != sum(n_images):
            return None
    start = 0
    for n in n_images:
        d: dict[str, torch.Tensor] = {}
        for k, v in img.items():
            if k == "pixel_values":
                d[k] = v[rows[start] : rows[start + n]]
            else:
                d[k] = v[start : start + n]
        out.append(d)
        start += n
    return out


def _rows(enc) -> list[torch.Tensor]:
    """Unpadded 1-d rows of a padded tokenizer / processor output (either padding side)."""
    ids, mask = enc["input_ids"], enc["attention_mask"]
    lengths = mask.sum(1).tolist()
    if bool(mask[:, 0].all()):  # right padding (or none): rows are prefixes
        return [ids[i, :n] for i, n in enumerate(lengths)]
    return [ids[i][mask[i].bool()] for i in range(len(lengths))]


def encode_batch(encoder: ChatEncoder, samples: list[dict], kind: str) -> list[dict | DataError]:
    """Encode many samples with one processor call; per-sample DataError for bad ones.

    Gives exactly `encode_one` per sample; falls back to it when the batch cannot be split.
    """
    if not samples:
        return []
    results: list[dict | DataError | None] = [None] * len(samples)
    texts: dict[int, tuple[str, ...]] = {}
    for i, s in enumerate(samples):
        try:
            texts[i] = texts_of(s, kind)
        except DataError as e:
            results[i] = e
    todo = [i for i in texts if samples[i]["images"]]
    for i in texts:  # text-only samples go one by one
        if not samples[i]["images"]:
            results[i] = _safe_one(encoder, samples[i], kind)
    if todo:
        _encode_images_batch(encoder, samples, kind, todo, texts, results)
    return [r for r in results if r is not None]  # type: ignore[misc]


def _safe_one(encoder: ChatEncoder, sample: dict, kind: str) -> dict | DataError:
    try:
        return encode_one(encoder, sample, kind)
    except DataError as e:
        return e


def _encode_images_batch(
    encoder: ChatEncoder,
    samples: list[dict],
    kind: str,
    todo: list[int],
    texts: dict[int, tuple[str, ...]],
    results: list,
) -> None:
    proc = encoder.processor
    prompts = [
        fast_prompt_text(encoder, samples[i]["prompt"], len(samples[i]["images"])) for i in todo
    ]
    fam = encoder.model_family
    images = fam.processor_images([samples[i]["images"] for i in todo])
    try:
        enc = proc(
            text=prompts, images=images, return_tensors="pt", padding=True, **fam.prompt_kwargs
        )
        split = _split_images(fam.image_keys, enc, [len(samples[i]["images"]) for i in todo])
    except Exception:
        split = None
    if split is None:  # unknown layout or a bad sample in the batch: isolate it
        for i in todo:
            results[i] = _safe_one(encoder, samples[i], kind)
        return
    resp_texts = [encoder.response_prefix + t + encoder.end_of_turn for i in todo for t in texts[i]]
    resp_ids = _rows(
        encoder.tokenizer(resp_texts, add_special_tokens=False, padding=True, return_tensors="pt")
    )
    prompt_ids = _rows(enc)
    r = 0
    for row, i in enumerate(todo):
        ids = prompt_ids[row]
        if len(ids) > encoder.max_length:
            results[i] = DataError(
                f"{_where(samples[i])}: prompt is {len(ids)} tokens (with image tokens) > "
                f"data.max_length {encoder.max_length}: raise max_length; image tokens are "
                "never truncated"
            )
            r += len(texts[i])
            continue
        prompt = EncodedPrompt(input_ids=ids, image_inputs=split[row])
        seqs = []
        for _ in texts[i]:
            seqs.append(encoder.join(prompt, resp_ids[r]))
            r += 1
        if kind == "sft":
            ((seq, cut),) = seqs
            ex = {
                **seq,
                "image_inputs": prompt.image_inputs,
                "prompt_len": len(ids),
                "truncated": cut,
            }
        else:
            (c, cut_c), (rj, cut_r) = seqs
            ex = {
                "chosen_input_ids": c["input_ids"],
                "chosen_labels": c["labels"],
                "rejected_input_ids": rj["input_ids"],
                "rejected_labels": rj["labels"],
                "image_inputs": prompt.image_inputs,
                "prompt_len": len(ids),
                "truncated": cut_c + cut_r,
            }
        results[i] = _finish(encoder, ex, samples[i]["key"], kind, ids, samples[i].get("meta"))


def _prompts_only(samples: list[dict], on_error: OnError, skips: SkipCounter | None) -> list[dict]:
    """Samples with a non-empty prompt, as decoded (images stay PIL): an RL prompt batch."""
    out = []
    for s in samples:
        if not (s.get("prompt") or "").strip():
            handle(DataError(f"{_where(s)}: empty prompt"), on_error, skips)
        else:
            out.append(s)
    return out


def make_batch_transform(
    encoder: ChatEncoder,
    kind: str,
    *,
    on_error: OnError = "raise",
    skips: SkipCounter | None = None,
) -> Callable[[list[dict]], list[dict]]:
    """samples -> examples (bad ones raise, or are dropped and counted under "skip")."""
    check_policy(on_error)
    if kind not in TRAIN_KINDS:
        raise DataError(f"training kind must be one of {TRAIN_KINDS}, got {kind!r}")

    if kind == "prompts":  # online RL: the policy generates; nothing is encoded here
        return partial(_prompts_only, on_error=on_error, skips=skips)

    def transform(samples: list[dict]) -> list[dict]:
        out = []
        for r in encode_batch(encoder, samples, kind):
            if isinstance(r, DataError):
                handle(r, on_error, skips)
            else:
                out.append(r)
        return out

    return transform
