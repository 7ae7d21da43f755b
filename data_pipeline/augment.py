"""Training-time augmentation of decoded samples: images (zoom, shift, flip, colour, colour
cast, tint, random erasing, noise) and prompts (a paraphrase the record carries), configured by the
recipe's `data.augment`.

Determinism: every draw comes from one `random.Random` seeded by (seed, epoch, sample key), so
the same sample in the same epoch of the same run is augmented identically however the run
was split into workers or resumed, and each epoch sees a new variant. Only the training stream
(`data_pipeline.reader.BatchStream`) calls this; evaluation never does.

Transforms, in this order: geometry (`Image.transform` AFFINE, `ImageOps.mirror`), colour
(`ImageEnhance`, HSV conversion), colour cast (numpy: one additive offset per channel), tint
(the same offsets weighted per pixel by its greyness, 1 - HSV saturation), random erasing
(`ImageDraw` rectangles of a flat grey-ish colour) and noise (numpy). The colour cast, the tint
and the erasing draw nothing from the sample's random stream when their setting is 0, so a
recipe without them gets exactly the images it got before they existed. PIL is already the
decoder of every image here, and these few operations need neither torchvision (not
installable beside the CPU torch) nor OpenCV (which albumentations would bring in, ~50 MB, for
the same handful of transforms).

Images keep their size and mode (RGB in, RGB out): a zoom below 1 shrinks the content inside
the frame and fills the border with the image's mean border colour; above 1 it crops into it.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from vlalign.config.schema import AugmentConfig


def sample_rng(seed: int, epoch: int, key: str) -> random.Random:
    """The random stream of one sample in one epoch of a run seeded by `seed`."""
    return random.Random(f"vlalign-augment-{seed}-{epoch}-{key}")


def _border_colour(image: Image.Image) -> tuple[int, ...]:
    arr = np.asarray(image)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    return tuple(int(v) for v in border.mean(0).round())


def _geometry(image: Image.Image, cfg: AugmentConfig, rng: random.Random) -> Image.Image:
    """Zoom by s about the centre, then shift by (tx, ty) pixels; then maybe mirror."""
    w, h = image.size
    s = rng.uniform(*cfg.scale)
    tx = rng.uniform(-cfg.translate, cfg.translate) * w
    ty = rng.uniform(-cfg.translate, cfg.translate) * h
    flip = rng.random() < cfg.flip
    cx, cy = w / 2, h / 2
    # AFFINE maps each output pixel (x, y) to the input pixel ((x - cx - tx) / s + cx, ...)
    coeffs = (1 / s, 0.0, cx - (cx + tx) / s, 0.0, 1 / s, cy - (cy + ty) / s)
    out = image.transform(
        (w, h),
        Image.Transform.AFFINE,
        coeffs,
        resample=Image.Resampling.BILINEAR,
        fillcolor=_border_colour(image),
    )
    return ImageOps.mirror(out) if flip else out


def _colour(image: Image.Image, cfg: AugmentConfig, rng: random.Random) -> Image.Image:
    """Brightness, contrast and saturation factors in 1 +- cfg.*, then a hue rotation."""
    for enhancer, amount in (
        (ImageEnhance.Brightness, cfg.brightness),
        (ImageEnhance.Contrast, cfg.contrast),
        (ImageEnhance.Color, cfg.saturation),
    ):
        factor = rng.uniform(1 - amount, 1 + amount)
        if factor != 1.0:
            image = enhancer(image).enhance(factor)
    shift = round(rng.uniform(-cfg.hue, cfg.hue) * 256)
    if shift:
        hsv = np.asarray(image.convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift) % 256
        image = Image.fromarray(hsv, "HSV").convert("RGB")
    return image


def _channel_offsets(amount: float, rng: random.Random) -> np.ndarray:
    """[3] float32: one offset per channel (R, G, B in that draw order), each from +- amount x 255."""
    return np.array([rng.uniform(-amount, amount) * 255.0 for _ in range(3)], dtype=np.float32)


def _colour_cast(image: Image.Image, cfg: AugmentConfig, rng: random.Random) -> Image.Image:
    """Add one offset per channel, each drawn from +- cfg.colour_cast * 255, clipped to 0..255."""
    if cfg.colour_cast <= 0:
        return image
    arr = np.asarray(image).astype(np.float32) + _channel_offsets(cfg.colour_cast, rng)
    return Image.fromarray(arr.clip(0, 255).round().astype(np.uint8), "RGB")


def _tint(image: Image.Image, cfg: AugmentConfig, rng: random.Random) -> Image.Image:
    """Tint the neutral pixels: one offset per channel from +- cfg.tint * 255, each pixel
    getting offset x (1 - saturation), saturation in 0..1 from PIL's HSV; clipped to 0..255.

    A light under a coloured cast (a pink wall, a green-lit room) tints grey surfaces most and
    barely moves a saturated object's hue, so the tint varies what surrounds the content while
    the colours that carry meaning stay apart (a global cast of the same size moves yellow
    toward orange: `_colour_cast`).
    """
    if cfg.tint <= 0:
        return image
    offsets = _channel_offsets(cfg.tint, rng)
    grey = 1.0 - np.asarray(image.convert("HSV"))[..., 1:2].astype(np.float32) / 255.0
    arr = np.asarray(image).astype(np.float32) + grey * offsets
    return Image.fromarray(arr.clip(0, 255).round().astype(np.uint8), "RGB")


def _erase(image: Image.Image, cfg: AugmentConfig, rng: random.Random) -> Image.Image:
    """Random erasing: paste 0..cfg.erase rectangles, each of a random grey-ish flat colour.

    Each side is drawn from 1 px to cfg.erase_size of the image side (at least 1 px); each
    channel of the fill from 60..200, so a rectangle never forms a saturated cue colour.
    """
    if cfg.erase <= 0:
        return image
    w, h = image.size
    max_w = max(1, int(cfg.erase_size * w))
    max_h = max(1, int(cfg.erase_size * h))
    count = rng.randint(0, cfg.erase)
    if count == 0:
        return image
    image = image.copy()
    draw = ImageDraw.Draw(image)
    for _ in range(count):
        rw, rh = rng.randint(1, max_w), rng.randint(1, max_h)
        x0, y0 = rng.randint(0, w - rw), rng.randint(0, h - rh)
        fill = tuple(rng.randint(60, 200) for _ in range(3))
        draw.rectangle((x0, y0, x0 + rw - 1, y0 + rh - 1), fill=fill)
    return image


def _noise(image: Image.Image, cfg: AugmentConfig, rng: random.Random) -> Image.Image:
    if cfg.noise <= 0:
        return image
    gen = np.random.default_rng(rng.getrandbits(64))
    arr = np.asarray(image).astype(np.float32)
    arr += gen.normal(0.0, cfg.noise * 255.0, size=arr.shape).astype(np.float32)
    return Image.fromarray(arr.clip(0, 255).round().astype(np.uint8), "RGB")


def augment_image(image: Image.Image, cfg: AugmentConfig, rng: random.Random) -> Image.Image:
    """One augmented copy of an RGB image (same size), every draw from `rng`."""
    image = image.convert("RGB")
    for transform in (_geometry, _colour, _colour_cast, _tint, _erase, _noise):
        image = transform(image, cfg, rng)
    return image


def augment_sample(sample: dict, cfg: AugmentConfig, *, seed: int, epoch: int) -> dict:
    """A decoded training sample with augmented images and maybe a paraphrased prompt.

    The input is not modified. The prompt becomes one of the record's `paraphrases` with
    probability `cfg.paraphrase` (only for single-turn samples: a `messages` conversation keeps
    its wording). Returns the sample unchanged when `cfg.enabled` is false.
    """
    if not cfg.enabled:
        return sample
    rng = sample_rng(seed, epoch, str(sample["key"]))
    out = dict(sample)
    out["images"] = [augment_image(im, cfg, rng) for im in sample.get("images") or []]
    paraphrases = sample.get("paraphrases") or []
    if paraphrases and not sample.get("messages") and rng.random() < cfg.paraphrase:
        out["prompt"] = rng.choice(paraphrases)
    return out
