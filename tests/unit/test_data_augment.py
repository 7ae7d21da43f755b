"""Training-time augmentation: seeded by (seed, epoch, key), exact for identity settings, equal
after a resume, applied by the training stream only (never to evaluation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from data_pipeline.augment import (
    _colour,
    _geometry,
    _noise,
    augment_image,
    augment_sample,
    sample_rng,
)
from data_pipeline.reader import TrainLoader, iter_samples
from data_pipeline.synth import synthesize
from vlalign.config.checks import check_recipe
from vlalign.config.schema import AugmentConfig, Recipe

ON = AugmentConfig(enabled=True)
OFF_GEOMETRY = dict(scale=(1.0, 1.0), translate=0.0, flip=0.0)
OFF_COLOUR = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, noise=0.0)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("augment") / "ds"
    synthesize(out, pairs=24, seed=1, eval_pairs=4, shift_pairs=0)
    return str(out)


def _bytes(sample: dict) -> list[bytes]:
    return [im.tobytes() for im in sample["images"]]


def test_seeded_by_seed_epoch_and_key(ds):
    s = next(iter_samples(ds, "train"))
    before = _bytes(s)
    a = augment_sample(s, ON, seed=3, epoch=1)
    assert _bytes(augment_sample(s, ON, seed=3, epoch=1)) == _bytes(a)  # same draw
    assert _bytes(s) == before  # the input is not modified
    assert _bytes(a) != before
    assert _bytes(augment_sample(s, ON, seed=3, epoch=2)) != _bytes(a)
    assert _bytes(augment_sample(s, ON, seed=4, epoch=1)) != _bytes(a)
    assert _bytes(augment_sample({**s, "key": "other"}, ON, seed=3, epoch=1)) != _bytes(a)
    assert a["images"][0].size == s["images"][0].size and a["images"][0].mode == "RGB"
    off = augment_sample(s, AugmentConfig(), seed=3, epoch=1)
    assert off is s  # disabled: untouched


def test_identity_settings_and_flip_are_exact():
    arr = np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    ident = AugmentConfig(enabled=True, **OFF_GEOMETRY, **OFF_COLOUR)
    assert augment_image(img, ident, sample_rng(0, 0, "k")).tobytes() == img.tobytes()
    flip = AugmentConfig(enabled=True, **{**OFF_GEOMETRY, "flip": 1.0}, **OFF_COLOUR)
    got = augment_image(img, flip, sample_rng(0, 0, "k"))
    assert got.tobytes() == ImageOps.mirror(img).tobytes()


def test_zoom_out_shrinks_the_content_about_the_centre():
    """scale 0.5 about the centre of a 16x16 image whose left half is black and right half white:
    output x maps to input (x - 8) / 0.5 + 8 = 2x - 8, so columns 4..11 hold the content (left
    black, right white) and columns 0..3 / 12..15 fall outside it and get the border mean colour
    (border: 30 black + 30 white pixels -> 127.5 -> 128)."""
    arr = np.zeros((16, 16, 3), dtype=np.uint8)
    arr[:, 8:] = 255
    img = Image.fromarray(arr, "RGB")
    cfg = AugmentConfig(enabled=True, scale=(0.5, 0.5), translate=0.0, flip=0.0, **OFF_COLOUR)
    out = np.asarray(augment_image(img, cfg, sample_rng(0, 0, "k")))
    row = out[8, :, 0]
    assert (row[:3] == 128).all() and (row[13:] == 128).all()
    assert (row[4:7] < 40).all() and (row[9:12] > 215).all()


def test_paraphrase_probability(ds):
    s = next(iter_samples(ds, "train"))
    assert s["paraphrases"]
    always = AugmentConfig(enabled=True, paraphrase=1.0)
    never = AugmentConfig(enabled=True, paraphrase=0.0)
    got = {augment_sample(s, always, seed=0, epoch=e)["prompt"] for e in range(30)}
    assert got <= set(s["paraphrases"]) and len(got) > 1
    assert {augment_sample(s, never, seed=0, epoch=e)["prompt"] for e in range(5)} == {s["prompt"]}


def _loader(ds, encoder, augment, start=0):
    return TrainLoader(
        ds,
        "train",
        kind="preference",
        encoder=encoder,
        batch_size=4,
        seed=5,
        shuffle_buffer=8,
        start_sample=start,
        augment=augment,
    )


def _take(loader, n):
    out = []
    for b in loader:
        out.append(b)
        if len(out) == n:
            return out
    return out


def test_resumed_stream_sees_the_same_augmented_batches(ds, model_cache):
    from data_support import encoder_for

    enc = encoder_for("tiny-llava", model_cache)
    full = _take(_loader(ds, enc, ON), 9)  # 24 pairs / 4 = 6 batches per epoch: crosses epoch 1
    assert [b["epoch"] for b in full] == [0] * 6 + [1] * 3
    resumed = _take(_loader(ds, enc, ON, start=4 * 4), 5)
    for a, b in zip(full[4:], resumed, strict=True):
        assert torch.equal(a["pixel_values"], b["pixel_values"])
        assert torch.equal(a["chosen_input_ids"], b["chosen_input_ids"])
    plain = _take(_loader(ds, enc, None), 9)
    for a, p in zip(full, plain, strict=True):  # augmentation was applied, to every batch
        assert not torch.equal(a["pixel_values"], p["pixel_values"])


def test_eval_is_never_augmented(ds, model_cache, monkeypatch, tmp_path):
    """Evaluation with a recipe that turns augmentation on: the augmenter is never called and
    the scorecard equals the one without augmentation."""
    from eval_support import small_recipe

    from vlalign.evaluation import evaluate

    calls = []
    monkeypatch.setattr(
        "data_pipeline.reader.augment_sample", lambda *a, **k: calls.append(1) or a[0]
    )
    on = small_recipe(model_cache, max_new_tokens=4)
    on.data.augment = ON
    off = small_recipe(model_cache, max_new_tokens=4)
    a = evaluate("builtin:tiny-llava", ds, on, tmp_path / "on", max_samples=4)
    b = evaluate("builtin:tiny-llava", ds, off, tmp_path / "off", max_samples=4)
    assert calls == []
    assert a.samples == b.samples and a.metrics == b.metrics


def test_check_refuses_augment_with_precomputed_reference_or_ray_data():
    r = Recipe()
    r.data.augment.enabled = True
    assert check_recipe(r) == []
    r.data.reader = "ray_data"
    assert any("data.augment" in p and "webdataset" in p for p in check_recipe(r))
    r = Recipe.model_validate(
        {
            "data": {"augment": {"enabled": True}},
            "method": {"name": "dpo", "reference": "precomputed"},
        }
    )
    assert any("data.augment" in p and "precomputed" in p for p in check_recipe(r))
    with pytest.raises(ValueError, match="scale"):
        AugmentConfig(scale=(1.2, 0.8))


def _flat(colour, size=64):
    return Image.new("RGB", (size, size), colour)


def test_new_transforms_off_draw_nothing_and_leave_images_as_before():
    """erase=0, colour_cast=0 and tint=0 (the defaults, whatever erase_size says): the output
    and the rng state afterwards equal those of the pipeline before these transforms existed."""
    arr = np.random.default_rng(1).integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    off = AugmentConfig(enabled=True, erase=0, erase_size=0.4, colour_cast=0.0, tint=0.0)
    assert off.model_dump() == {**ON.model_dump(), "erase_size": 0.4}
    for key in ("a", "b", "c"):
        old_rng, new_rng = sample_rng(2, 1, key), sample_rng(2, 1, key)
        old = img.convert("RGB")
        for transform in (_geometry, _colour, _noise):
            old = transform(old, ON, old_rng)
        assert augment_image(img, ON, sample_rng(2, 1, key)).tobytes() == old.tobytes()
        assert augment_image(img, off, new_rng).tobytes() == old.tobytes()
        assert new_rng.getstate() == old_rng.getstate()


def test_erase_pastes_small_grey_rectangles():
    """A pure red image (no channel in 60..200), erase=5, erase_size=0.1 at 64 px: every changed
    pixel is a grey-ish fill, each fill colour (one per rectangle) covers at most a 6x6 box
    (int(0.1 * 64)), there are at most 5 of them, and the count varies from image to image."""
    img = _flat((255, 0, 0))
    cfg = AugmentConfig(enabled=True, **OFF_GEOMETRY, **OFF_COLOUR, erase=5, erase_size=0.1)
    counts = []
    for k in range(40):
        out = augment_image(img, cfg, sample_rng(0, 0, f"k{k}"))
        assert out.size == img.size and out.mode == "RGB"
        arr = np.asarray(out)
        changed = (arr != (255, 0, 0)).any(-1)
        assert changed.sum() <= 5 * 6 * 6
        assert ((arr[changed] >= 60) & (arr[changed] <= 200)).all()
        fills = {tuple(c) for c in arr[changed]}
        assert len(fills) <= 5
        for fill in fills:
            ys, xs = np.nonzero((arr == fill).all(-1))
            assert xs.max() - xs.min() + 1 <= 6 and ys.max() - ys.min() + 1 <= 6
        counts.append(len(fills))
    assert sum(c > 0 for c in counts) >= 25  # count drawn from 0..5: 0 about 1 time in 6
    assert min(counts) == 0 and max(counts) >= 4
    assert img.tobytes() == _flat((255, 0, 0)).tobytes()  # the input is not modified


def test_colour_cast_adds_one_clipped_offset_per_channel():
    cfg = AugmentConfig(enabled=True, **OFF_GEOMETRY, **OFF_COLOUR, colour_cast=0.2)
    grey, white = _flat((128, 128, 128), 16), _flat((255, 255, 255), 16)
    signs = set()
    for k in range(20):
        out = np.asarray(augment_image(grey, cfg, sample_rng(0, 0, f"k{k}"))).astype(int)
        assert (out == out[0, 0]).all()  # one constant per channel, over every pixel
        offsets = out[0, 0] - 128
        assert (np.abs(offsets) <= 0.2 * 255 + 0.5).all()
        assert len(set(offsets.tolist())) == 3  # each channel its own offset
        signs |= set(np.sign(offsets).tolist())
        lit = np.asarray(augment_image(white, cfg, sample_rng(0, 0, f"k{k}"))).astype(int)
        assert (lit == np.minimum(255, 255 + offsets)).all()  # clipped, never wrapped
    assert {-1, 1} <= signs


def test_tint_moves_grey_pixels_and_keeps_saturated_colours():
    """A grey half and a yellow-cue half: the grey pixels move by the full offsets (one per
    channel, within +- tint x 255, clipped), the yellow ones by (1 - saturation) of them, so its
    hue stays within 0.01 (a global cast of the same size moves it by more than 0.02 toward the
    orange cue's)."""
    from data_pipeline.images import CUES

    yellow, orange = CUES["yellow_star"].colour, CUES["orange_blob"].colour
    arr = np.zeros((8, 16, 3), dtype=np.uint8)
    arr[:, :8], arr[:, 8:] = (128, 128, 128), yellow
    img = Image.fromarray(arr, "RGB")
    cfg = AugmentConfig(enabled=True, **OFF_GEOMETRY, **OFF_COLOUR, tint=0.09)
    sat = np.asarray(Image.new("RGB", (1, 1), yellow).convert("HSV"))[0, 0, 1] / 255.0
    yellow_hue = _hue(yellow)
    moved = []
    for k in range(30):
        out = np.asarray(augment_image(img, cfg, sample_rng(0, 0, f"k{k}"))).astype(float)
        grey_off = out[0, 0] - 128
        assert (out[:, :8] == out[0, 0]).all() and (np.abs(grey_off) <= 0.09 * 255 + 0.5).all()
        expected = np.clip(np.asarray(yellow) + (1 - sat) * grey_off, 0, 255)
        assert np.abs(out[0, 8] - expected).max() <= 1.0  # rounded once
        assert abs(_hue(tuple(out[0, 8])) - yellow_hue) < 0.01
        assert abs(_hue(tuple(out[0, 8])) - _hue(orange)) > 0.05
        moved.append(np.abs(grey_off).max())
    assert max(moved) > 0.06 * 255  # the grey half really is tinted
    cast = AugmentConfig(enabled=True, **OFF_GEOMETRY, **OFF_COLOUR, colour_cast=0.09)
    cast_moves = [
        abs(
            _hue(tuple(np.asarray(augment_image(img, cast, sample_rng(0, 0, f"k{k}")))[0, 8]))
            - yellow_hue
        )
        for k in range(30)
    ]
    assert max(cast_moves) > 0.02


def _hue(rgb) -> float:
    """Hue in 0..1 of an RGB triple."""
    import colorsys

    return colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))[0]


def test_erase_and_colour_cast_are_seeded_by_seed_epoch_and_key(ds):
    s = next(iter_samples(ds, "train"))
    cfg = AugmentConfig(
        enabled=True, **OFF_GEOMETRY, **OFF_COLOUR, erase=8, colour_cast=0.1, tint=0.1
    )
    a = augment_sample(s, cfg, seed=3, epoch=1)
    assert _bytes(augment_sample(s, cfg, seed=3, epoch=1)) == _bytes(a)
    assert _bytes(a) != _bytes(s)
    assert _bytes(augment_sample(s, cfg, seed=3, epoch=2)) != _bytes(a)
    assert _bytes(augment_sample({**s, "key": "other"}, cfg, seed=3, epoch=1)) != _bytes(a)


@pytest.mark.parametrize(
    "field",
    [{"erase": -1}, {"erase": 33}, {"erase_size": 0}, {"colour_cast": 1.0}, {"tint": -0.1}],
)
def test_erase_and_colour_cast_bounds(field):
    with pytest.raises(ValueError, match=next(iter(field))):
        AugmentConfig(**field)
