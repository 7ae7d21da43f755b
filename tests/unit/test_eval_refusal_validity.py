"""Refusal detection (phrases, judge interface) and text validity on tricky strings."""

from __future__ import annotations

import pytest

from vlalign.errors import VlalignError
from vlalign.safety.refusal import (
    JudgeRefusalDetector,
    PhraseRefusalDetector,
    RefusalDetector,
    make_detector,
    normalize,
)
from vlalign.safety.validity import text_validity


def test_normalize_quotes_case_punctuation():
    assert normalize("I CAN\u2019T help!!") == "i cant help"
    assert normalize("  I can't\thelp...  ") == "i cant help"
    assert normalize("\u201cSorry,\u201d she said") == "sorry she said"
    assert normalize("ＩＭ ＳＯＲＲＹ") == "im sorry"  # full-width letters (NFKC)


REFUSALS = [
    "I can't help with that.",
    "I CAN\u2019T HELP WITH THAT",  # curly apostrophe, upper case
    "i cant help with that",
    "Sorry, but I cannot assist with this request.",
    "I\u2019m sorry \u2014 that is not something I can help with.",
    "I'm unable to provide that.",
    "I must decline.",
    "As an AI, I won't do that.",
    "My apologies; I will not share that.",
    "I am not able to describe how to make this.",
    "Unfortunately, I can\u02bct comply.",  # modifier-letter apostrophe
    "...I refuse to participate.",
]
COMPLIANT = [
    "Sure! Here is how to bake bread: mix flour and water.",
    "The picture shows a green circle on a white background.",
    "You can't go wrong with a blue square.",  # "can't" without a refusal verb
    "I can help with that: the answer is 42.",
    "The sorry state of the road is visible.",  # "sorry" not as an apology phrase
    "",
    "Sorryyy",  # not the word "sorry"
]


@pytest.mark.parametrize("text", REFUSALS)
def test_phrase_detector_flags_refusals(text):
    d = PhraseRefusalDetector()
    assert d.is_refusal([text]) == [True], (text, normalize(text))


@pytest.mark.parametrize("text", COMPLIANT)
def test_phrase_detector_passes_answers(text):
    assert PhraseRefusalDetector().is_refusal([text]) == [False], (text, normalize(text))


def test_phrase_detector_order_and_extra_patterns():
    d = PhraseRefusalDetector(extra_patterns=[r"no way"])
    assert d.is_refusal(["ok", "No way!", "I can't help."]) == [False, True, True]
    assert isinstance(d, RefusalDetector)
    assert d.matched("Well... NO WAY.") == "no way"
    with pytest.raises(VlalignError, match="invalid regular expression"):
        PhraseRefusalDetector(extra_patterns=["(unclosed"])


def test_judge_detector_with_injected_functions():
    gen = JudgeRefusalDetector(generate_fn=lambda ts: ["Yes." if "x" in t else "no" for t in ts])
    assert gen.kind == "generative"
    assert gen.is_refusal(["x1", "y", "x"]) == [True, False, True]
    cls = JudgeRefusalDetector(classify_fn=lambda ts: [len(t) > 2 for t in ts], batch_size=2)
    assert cls.is_refusal(["a", "abc", "abcd", "b", "zzz"]) == [False, True, True, False, True]
    bad = JudgeRefusalDetector(classify_fn=lambda ts: [True])
    with pytest.raises(VlalignError, match="1 answers for 2 texts"):
        bad.is_refusal(["a", "b"])


def test_judge_classifier_checkpoint(tmp_path):
    """A real sequence-classification checkpoint; its bias decides, so the label mapping is checked."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from vlalign.models.tokenizer import train_tokenizer

    tok = train_tokenizer([], None)
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
        id2label={0: "complied", 1: "refusal"},
        label2id={"complied": 0, "refusal": 1},
        pad_token_id=tok.pad_token_id,
    )
    for bias, expected in (([0.0, 50.0], True), ([50.0, 0.0], False)):
        m = BertForSequenceClassification(cfg)
        with torch.no_grad():
            m.classifier.weight.zero_()
            m.classifier.bias.copy_(torch.tensor(bias))
        d = tmp_path / f"judge-{expected}"
        m.save_pretrained(d)
        tok.save_pretrained(d)
        det = make_detector("judge", str(d))
        assert det.kind == "classifier"
        assert det.is_refusal(["I can't help.", "sure thing", "ok"]) == [expected] * 3


def test_judge_errors(tmp_path):
    with pytest.raises(VlalignError, match="judge model path is required"):
        make_detector("judge", None)
    with pytest.raises(VlalignError, match="unknown detector"):
        make_detector("vibes")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        (".", "no_words"),
        (" ?! ...", "no_words"),
        ("OfOfOfOfOfOf", "repeated_pattern"),
        ("the answer is abcabcabcabc indeed", "repeated_pattern"),
        ("no no no no", "repeated_word"),
        ("No, no. NO! no", "repeated_word"),
        ("wow!!!!!!!!", "repeated_char"),
        ("\x1e\x1f\x07\ufffd\ufffd ab", "unprintable"),
        ("� helpful spor� g be what photo\x1e�", "unprintable"),
    ],
)
def test_invalid_texts(text, reason):
    assert text_validity(text).reason == reason
    assert not text_validity(text).valid


@pytest.mark.parametrize(
    "text",
    [
        "I can't help with that.",
        "The image shows a green circle.",
        "no no no",  # three in a row is allowed
        "It costs 1000 dollars.",  # digits repeated 3 times only
        "Well... maybe.",
        "Ha ha, that is a blue square.",
        "No.",  # short, but a word
        "42",
    ],
)
def test_valid_texts(text):
    assert text_validity(text).valid, text_validity(text)


def test_default_detector_agrees_with_the_synthetic_data():
    """Every refusal phrasing `vlalign data synth` writes is a refusal; no helpful one is."""
    from data_pipeline.synth import HELPFUL, REFUSALS

    d = PhraseRefusalDetector()
    assert d.is_refusal(list(REFUSALS)) == [True] * len(REFUSALS)
    assert d.is_refusal(list(HELPFUL)) == [False] * len(HELPFUL)
    assert all(text_validity(t).valid for t in (*REFUSALS, *HELPFUL))
