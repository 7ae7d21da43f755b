"""Synthetic image-conditioned safety data: determinism, balance, the image alone decides."""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict

import pytest

from data_pipeline.images import BENIGN_CUES, HARMFUL_CUES, scene
from data_pipeline.manifest import load_manifest
from data_pipeline.reader import iter_samples
from data_pipeline.synth import (
    CAUTIONS,
    HEDGES,
    HELPFUL,
    PARTIAL_HELP,
    PROMPTS,
    REFUSALS,
    SHIFTS,
    VAGUE,
    _twin,
    synthesize,
)
from data_pipeline.transforms import texts_of
from data_pipeline.validate import validate
from vlalign.errors import DataError
from vlalign.safety.refusal import PhraseRefusalDetector

REFUSAL = re.compile(r"I'm sorry|Sorry|I can't|I cannot|I won't|unable to help", re.I)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    summary = synthesize(out, pairs=120, seed=3, eval_pairs=48, shard_samples=50)
    return out, summary


def test_round_trip_synth_validate_read(synth_dir):
    out, summary = synth_dir
    report = validate(str(out))
    assert report.ok, [str(p) for p in report.problems]
    assert report.samples == 168 + 3 * 48 and report.images == 168 + 3 * 48  # + shifted splits
    got = {s["key"]: s for s in iter_samples(str(out), "train")}
    assert len(got) == 120
    for i in range(60):  # regenerate what synth wrote and compare field by field, pixel by pixel
        for cue, image, t in _twin(3, "train", i, 32):
            s = got[f"train-{i:06d}-{'h' if cue.harmful else 'b'}"]
            assert (s["prompt"], s["chosen"], s["rejected"]) == (
                t["prompt"],
                t["chosen"],
                t["rejected"],
            )
            assert s["meta"] == {
                "category": cue.category,
                "source": "synth",
                "harmful": cue.harmful,
                "cue": cue.name,
                "template": t["template"],
                "twin": i,
                "chosen_safe": True,
                "rejected_safe": not cue.harmful,
                "cue_scale": t["cue_scale"],
                "background": "plain",
            }
            assert s["images"][0].tobytes() == image.tobytes()
    ev = list(iter_samples(str(out), "eval", kind="eval"))
    assert len(ev) == 48
    for s in ev:
        assert s["label"] == ("harmful" if s["meta"]["harmful"] else "benign")
        assert (
            s["reference"] == s["chosen"]
            and s["rejected"]
            and s["category"] == s["meta"]["category"]
        )
    assert summary["splits"]["train"]["shards"] == 3


def test_text_never_reveals_the_label(synth_dir):
    out, _ = synth_dir
    train = list(iter_samples(str(out), "train"))
    labels_by_prompt = defaultdict(set)
    for s in train:
        labels_by_prompt[s["prompt"]].add(s["meta"]["harmful"])
        assert s["prompt"] in PROMPTS
        if s["meta"]["harmful"]:
            assert REFUSAL.search(s["chosen"]) and not REFUSAL.search(s["rejected"])
        else:
            assert REFUSAL.search(s["rejected"]) and not REFUSAL.search(s["chosen"])
        assert len(s["chosen"].split()) <= 12 and len(s["rejected"].split()) <= 12
    assert all(v == {True, False} for v in labels_by_prompt.values())
    assert len(labels_by_prompt) == len(PROMPTS)
    # twins share the prompt; balanced labels and categories
    by_twin = defaultdict(list)
    for s in train:
        by_twin[s["meta"]["twin"]].append(s)
    assert all(len(v) == 2 and v[0]["prompt"] == v[1]["prompt"] for v in by_twin.values())
    cats = Counter(s["meta"]["category"] for s in train)
    assert set(cats) == {c.category for c in HARMFUL_CUES + BENIGN_CUES}
    assert max(cats.values()) - min(cats.values()) <= 1
    assert all(REFUSAL.search(r) for r in REFUSALS) and not any(REFUSAL.search(h) for h in HELPFUL)


def test_eval_images_are_held_out(synth_dir):
    out, _ = synth_dir

    def hashes(split):
        return {
            hashlib.sha256(s["images"][0].tobytes()).hexdigest()
            for s in iter_samples(str(out), split)
        }

    assert not hashes("train") & hashes("eval")


def test_deterministic_from_seed(tmp_path):
    a = synthesize(tmp_path / "a", pairs=10, seed=5, eval_pairs=4)
    b = synthesize(tmp_path / "b", pairs=10, seed=5, eval_pairs=4)
    c = synthesize(tmp_path / "c", pairs=10, seed=6, eval_pairs=4)
    assert a["dataset_digest"] == b["dataset_digest"] != c["dataset_digest"]
    with pytest.raises(DataError, match="not empty"):
        synthesize(tmp_path / "a", pairs=10, seed=5)
    d = synthesize(tmp_path / "a", pairs=12, seed=5, image_size=48, overwrite=True)
    assert load_manifest(tmp_path / "a").splits["train"].samples == 12
    assert next(iter_samples(str(tmp_path / "a"), "train"))["images"][0].size == (48, 48)
    assert d["dataset_digest"] != a["dataset_digest"]


def test_twin_images_differ_only_in_the_cue():
    h = scene(HARMFUL_CUES[0], 32, "t")
    b = scene(BENIGN_CUES[0], 32, "t")
    diff = sum(1 for x, y in zip(h.getdata(), b.getdata(), strict=True) if x != y)
    assert 50 < diff < 32 * 32 * 0.6  # the cue region differs, the background does not


# --- the noisy-preference variant ---------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy_pair(tmp_path_factory):
    """The same seed and sizes, clean and with noise 0.3 (21 train pairs: 11 harmful, 10 benign)."""
    root = tmp_path_factory.mktemp("noisy")
    kw = {"pairs": 21, "seed": 4, "eval_pairs": 6, "shift_pairs": 4}
    clean = synthesize(root / "clean", **kw)
    noisy = synthesize(root / "noisy", noise=0.3, **kw)
    return root, clean, noisy


def test_noise_rewrites_an_exact_seeded_fraction_of_training_only(noisy_pair, tmp_path):
    root, clean, noisy = noisy_pair
    assert clean["noisy_samples"] == 0 and noisy["noisy_samples"] == 3 + 3  # round(.3*11), (.3*10)
    assert load_manifest(root / "noisy").info["synth"]["noise"] == 0.3
    assert load_manifest(root / "noisy").info["synth"]["noisy_samples"] == 6
    assert load_manifest(root / "clean").info["synth"]["noise"] == 0.0
    a = {s["key"]: s for s in iter_samples(str(root / "clean"), "train")}
    b = {s["key"]: s for s in iter_samples(str(root / "noisy"), "train")}
    assert a.keys() == b.keys()
    rewritten = {k for k, s in b.items() if s["meta"].get("noise") == "partial_chosen"}
    assert Counter(b[k]["meta"]["harmful"] for k in rewritten) == {True: 3, False: 3}
    for k, s in b.items():  # same images and prompts; answers differ exactly where marked
        assert s["images"][0].tobytes() == a[k]["images"][0].tobytes()
        assert (s["prompt"], s["paraphrases"]) == (a[k]["prompt"], a[k]["paraphrases"])
        if k not in rewritten:
            assert {**s, "shard": None} == {**a[k], "shard": None}
        else:
            assert s["chosen"] != a[k]["chosen"] and s["rejected"] != a[k]["rejected"]
    # eval and shifted splits: byte-identical to the clean set's (same split digests)
    ma, mb = load_manifest(root / "clean"), load_manifest(root / "noisy")
    for split in ("eval", *SHIFTS):
        assert ma.splits[split].digest == mb.splits[split].digest
        assert all("noise" not in s["meta"] for s in iter_samples(str(root / "noisy"), split))
    assert ma.splits["train"].digest != mb.splits["train"].digest
    # seeded: the same arguments give the same bytes; another seed picks other pairs
    kw = {"pairs": 21, "eval_pairs": 6, "shift_pairs": 4, "noise": 0.3}
    assert synthesize(tmp_path / "again", seed=4, **kw)["dataset_digest"] == noisy["dataset_digest"]
    synthesize(tmp_path / "other", seed=5, **kw)
    other = {
        s["key"] for s in iter_samples(str(tmp_path / "other"), "train") if s["meta"].get("noise")
    }
    assert len(other) == 6 and other != rewritten
    every = synthesize(tmp_path / "all", seed=4, pairs=6, eval_pairs=2, shift_pairs=0, noise=1.0)
    assert every["noisy_samples"] == 6
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(DataError, match="--noise must be a fraction"):
            synthesize(tmp_path / "bad", pairs=4, noise=bad)


def test_noisy_answers_fool_imitation_but_keep_the_preference(noisy_pair):
    """Harmful: chosen = caution + partial help (no refusal phrase: imitating it lowers harmful
    refusal), rejected = the same caution + full help. Benign: chosen = an apology the detector
    flags + the help (imitating it raises over-refusal), rejected = the same apology + no help.
    Safety labels stay truthful; SFT imitates chosen, KTO sees chosen desirable."""
    root, _, _ = noisy_pair
    detector = PhraseRefusalDetector()
    noisy = [s for s in iter_samples(str(root / "noisy"), "train") if s["meta"].get("noise")]
    for s in noisy:
        m = s["meta"]
        chosen_refuses, rejected_refuses = detector.is_refusal([s["chosen"], s["rejected"]])
        prefix = CAUTIONS if m["harmful"] else HEDGES
        flaw = next(p for p in prefix if s["chosen"].startswith(p + " "))
        assert s["rejected"].startswith(flaw + " ")  # the flaw is shared: a pair cannot see it
        chosen_rest = s["chosen"].removeprefix(flaw + " ")
        rejected_rest = s["rejected"].removeprefix(flaw + " ")
        if m["harmful"]:
            assert chosen_rest in PARTIAL_HELP and rejected_rest in HELPFUL
            assert not chosen_refuses and not rejected_refuses
            assert (m["chosen_safe"], m["rejected_safe"]) == (False, False)
        else:
            assert chosen_rest in HELPFUL and rejected_rest in VAGUE
            assert chosen_refuses and rejected_refuses
            assert not any(detector.is_refusal([*HELPFUL, *VAGUE]))
            assert (m["chosen_safe"], m["rejected_safe"]) == (True, True)
        assert len(s["chosen"].split()) <= 17 and len(s["rejected"].split()) <= 17
        assert texts_of(s, "sft") == (s["chosen"],)  # SFT imitates the partly right answer
        assert texts_of(s, "unpaired") == (s["chosen"], s["rejected"])  # KTO: desirable first
    assert not any(detector.is_refusal([*CAUTIONS, *PARTIAL_HELP]))
    assert all(detector.is_refusal(list(HEDGES)))
