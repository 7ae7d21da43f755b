"""bench/blind_wordings.py: a study's shard set again, its wording-shifted prompts from a new bank."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import blind_wordings  # noqa: E402

from data_pipeline import synth  # noqa: E402
from data_pipeline.reader import iter_samples  # noqa: E402

BANK = [
    [f"Blind wording {t} number {i}, about the pictured thing?" for i in range(3)] for t in range(6)
]


def _write(tmp_path: Path, bank) -> Path:
    path = tmp_path / "bank.json"
    path.write_text(json.dumps(bank))
    return path


def test_bank_must_have_one_list_per_template_and_be_new(tmp_path):
    assert blind_wordings.load_bank(_write(tmp_path, BANK))[5][2] == BANK[5][2]
    with pytest.raises(SystemExit, match="expected a list of 6 lists"):
        blind_wordings.load_bank(_write(tmp_path, BANK[:5]))
    with pytest.raises(SystemExit, match="template 2"):
        blind_wordings.load_bank(_write(tmp_path, [*BANK[:2], [], *BANK[3:]]))
    known = synth.TRAIN_PARAPHRASES[1][-1].upper()  # case and punctuation do not hide a reuse
    with pytest.raises(SystemExit, match="already in the generator's banks"):
        blind_wordings.load_bank(_write(tmp_path, [*BANK[:1], [known], *BANK[2:]]))


def test_only_the_wording_shifted_prompts_change(tmp_path):
    bank = blind_wordings.load_bank(_write(tmp_path, BANK))
    sizes = {"pairs": 12, "eval_pairs": 6, "shift_pairs": 6}
    synth.synthesize(tmp_path / "plain", seed=3, **sizes)
    blind_wordings.synthesize_with(bank, tmp_path / "blind", 3, **sizes)
    assert synth.EVAL_WORDINGS is not bank  # the module's own bank is back
    for split in ("train", "eval", "shift-visual", "shift-wording", "shift-both"):
        a = list(iter_samples(str(tmp_path / "plain"), split))
        b = list(iter_samples(str(tmp_path / "blind"), split))
        assert [s["key"] for s in a] == [s["key"] for s in b]
        for x, y in zip(a, b, strict=True):
            assert x["meta"] == y["meta"] and x.get("label") == y.get("label")
            assert [im.tobytes() for im in x["images"]] == [im.tobytes() for im in y["images"]]
            if split.startswith("shift-") and split != "shift-visual":
                assert y["prompt"] in bank[x["meta"]["template"]]
                assert x["prompt"] in synth.EVAL_WORDINGS[x["meta"]["template"]]
            else:
                assert x["prompt"] == y["prompt"]
