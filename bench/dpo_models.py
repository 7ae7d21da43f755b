"""Models and data for `bench/dpo_step.py`: tiny built-ins on CPU, published shapes on CUDA.

Shapes (``--shape``):

- ``tiny-llava`` / ``tiny-qwen2-vl`` / ``tiny-idefics3``: vlalign's built-in tiny models
  (`vlalign.models.build`, random weights, local tokenizer), ``size`` nano (~0.5M params) or
  small (~4M).
- ``llava-1.5-7b``: LLaVA-1.5-7B's published hyper-parameters (llava-hf/llava-1.5-7b-hf
  config.json): CLIP ViT-L/14 at 336 px (24 layers, width 1024, 16 heads, MLP 4096; feature layer
  -2, CLS dropped: 576 image tokens), 2-layer GELU projector 1024 -> 4096 -> 4096, Vicuna/Llama-2
  7B language model (32 layers, width 4096, 32 heads, 32 KV heads, MLP 11008, vocab 32064,
  untied head). ~7.06B parameters.
- ``qwen2-vl-2b``: Qwen2-VL-2B's (Qwen/Qwen2-VL-2B-Instruct config.json): ViT (32 layers,
  width 1280, 16 heads, MLP ratio 4, patch 14, temporal patch 2, 2x2 merger to 1536), Qwen2-1.5B
  language model (28 layers, width 1536, 12 heads, 2 KV heads, MLP 8960, vocab 151936, M-RoPE
  sections [16, 24, 24], rope theta 1e6, tied embeddings). 448 px images -> 1024 patches -> 256
  image tokens. ~2.21B parameters.

The published shapes are built from configs with random weights (no download), directly on the
target device in the target dtype (`torch.device(...)` context). Their tokenizer is vlalign's small
local BPE (the published models' tokenizers cannot be downloaded): token ids stay far below the
published vocabulary, which keeps the embedding and LM-head shapes (and FLOPs) of the real model.
``shrink=True`` keeps a published shape's image geometry and token counts but makes every width
and depth tiny, so the CUDA code path can be exercised on a CPU.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from PIL import Image

TINY_SHAPES = ("tiny-llava", "tiny-qwen2-vl", "tiny-idefics3")
PUBLISHED_SHAPES = ("llava-1.5-7b", "qwen2-vl-2b")
SHAPES = TINY_SHAPES + PUBLISHED_SHAPES

# Workload defaults per shape: pairs per batch, image side, prompt tokens, response token range.
WORKLOADS = {
    # the targets
    "llava-1.5-7b": dict(batch=4, image_size=336, prompt_tokens=64, response_tokens=(128, 256)),
    "qwen2-vl-2b": dict(batch=8, image_size=448, prompt_tokens=64, response_tokens=(128, 256)),
    # CPU: small enough for the whole bench to run in ~2 minutes on 2 cores
    "tiny-llava": dict(batch=4, image_size=64, prompt_tokens=24, response_tokens=(32, 64)),
    "tiny-qwen2-vl": dict(batch=4, image_size=64, prompt_tokens=24, response_tokens=(32, 64)),
    "tiny-idefics3": dict(batch=4, image_size=64, prompt_tokens=24, response_tokens=(32, 64)),
}
QUICK_WORKLOAD = dict(batch=2, image_size=32, prompt_tokens=8, response_tokens=(6, 12))

_WORDS = str.split(
    "the image shows a small red object on a table next to a blue cup and some papers "
    "please describe what you see and explain how it could be used safely at home or at work "
    "first gather the parts then follow each step carefully and check the result before you "
    "continue I am sorry but I cannot help with that request because it could cause harm "
    "here is a detailed answer with three steps one two three and a short summary at the end"
)


@dataclass
class Setup:
    """A model (before LoRA), its processor and the bench's preference examples.

    examples: B dicts {"key", "images": [PIL], "prompt", "chosen", "rejected"} (the decoded-sample
    layout of the data contract).
    """

    shape: str
    family: str
    model: torch.nn.Module
    processor: object
    examples: list[dict]
    image_size: int
    dtype: torch.dtype
    device: str
    notes: list[str] = field(default_factory=list)


def _published_llava(tok, image_size: int, shrink: bool):
    from transformers import LlamaConfig, LlavaConfig
    from transformers.models.clip import CLIPVisionConfig

    patch = 14
    v = (
        dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16)
        if not shrink
        else dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    )
    t = (
        dict(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
        )
        if not shrink
        else dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
        )
    )
    return LlavaConfig(
        vision_config=CLIPVisionConfig(
            **v,
            image_size=image_size,
            patch_size=patch,
            projection_dim=768,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        ),
        text_config=LlamaConfig(
            **t,
            vocab_size=32064,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        ),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(image_size // patch) ** 2,
        tie_word_embeddings=False,
    )


def _published_qwen2_vl(tok, shrink: bool):
    from transformers import Qwen2VLConfig

    ids = {
        k: tok.convert_tokens_to_ids(k)
        for k in (
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|image_pad|>",
            "<|video_pad|>",
        )
    }
    if shrink:  # head_dim 16: M-RoPE sections must sum to 8
        t = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
        t.update(num_key_value_heads=2, rope_sections=[2, 3, 3])
        v = dict(depth=2, embed_dim=32, num_heads=2)
    else:
        t = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28)
        t.update(num_attention_heads=12, num_key_value_heads=2, rope_sections=[16, 24, 24])
        v = dict(depth=32, embed_dim=1280, num_heads=16)
    sections = t.pop("rope_sections")
    text = dict(
        **t,
        vocab_size=151936,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "mrope_section": sections, "rope_theta": 1e6},
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=ids["<|im_end|>"],
    )
    return Qwen2VLConfig(
        text_config=text,
        vision_config=dict(
            **v,
            hidden_size=t["hidden_size"],
            mlp_ratio=4,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_chans=3,
            hidden_act="quick_gelu",
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def published_config_and_processor(shape: str, image_size: int, shrink: bool = False):
    """(transformers config, processor) of a published shape, with the local tokenizer."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from vlalign.models.families.llava import LLAVA_TEMPLATE
    from vlalign.models.families.qwen2_vl import QWEN_SPECIALS, QWEN_TEMPLATE
    from vlalign.models.processors import Qwen2VLImageOnlyProcessor
    from vlalign.models.tokenizer import train_tokenizer

    if shape == "llava-1.5-7b":
        tok = train_tokenizer(["<image>"], LLAVA_TEMPLATE)
        cfg = _published_llava(tok, image_size, shrink)
        proc = LlavaProcessor(
            image_processor=CLIPImageProcessorPil(
                size={"shortest_edge": image_size},
                crop_size={"height": image_size, "width": image_size},
            ),
            tokenizer=tok,
            patch_size=14,
            vision_feature_select_strategy="default",
            chat_template=LLAVA_TEMPLATE,
            image_token="<image>",
            num_additional_image_tokens=1,
        )
        return cfg, proc
    if shape == "qwen2-vl-2b":
        tok = train_tokenizer(list(QWEN_SPECIALS), QWEN_TEMPLATE)
        cfg = _published_qwen2_vl(tok, shrink)
        px = image_size * image_size
        proc = Qwen2VLImageOnlyProcessor(
            image_processor=Qwen2VLImageProcessorPil(
                min_pixels=px, max_pixels=px, patch_size=14, merge_size=2, temporal_patch_size=2
            ),
            tokenizer=tok,
            chat_template=QWEN_TEMPLATE,
        )
        return cfg, proc
    raise ValueError(f"not a published shape: {shape!r} (choose from {PUBLISHED_SHAPES})")


def text_of_tokens(tokenizer, n_tokens: int, rng: random.Random) -> str:
    """Random words from a fixed list whose tokenization has about `n_tokens` tokens (>=)."""
    words = [rng.choice(_WORDS) for _ in range(max(4, n_tokens * 2))]
    lo, hi = 1, len(words)
    while lo < hi:  # fewest words reaching n_tokens
        mid = (lo + hi) // 2
        if len(tokenizer(" ".join(words[:mid]), add_special_tokens=False)["input_ids"]) >= n_tokens:
            hi = mid
        else:
            lo = mid + 1
    return " ".join(words[:lo])


def make_examples(tokenizer, workload: dict, seed: int = 0) -> list[dict]:
    """B preference examples: random RGB image, ~prompt_tokens prompt, responses in the range."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    px = workload["image_size"]
    lo, hi = workload["response_tokens"]
    out = []
    for i in range(workload["batch"]):
        pixels = torch.randint(0, 256, (px, px, 3), generator=g, dtype=torch.uint8).numpy()
        out.append(
            {
                "key": f"pair-{i}",
                "images": [Image.fromarray(pixels, "RGB")],
                "prompt": text_of_tokens(tokenizer, workload["prompt_tokens"], rng),
                "chosen": text_of_tokens(tokenizer, rng.randint(lo, hi), rng),
                "rejected": text_of_tokens(tokenizer, rng.randint(lo, hi), rng),
            }
        )
    return out


def build_setup(
    shape: str,
    workload: dict,
    device: str,
    dtype: torch.dtype,
    *,
    size: str = "small",
    cache_dir: str | None = None,
    shrink: bool = False,
    attn: str = "sdpa",
    seed: int = 0,
) -> Setup:
    """Build the model (random weights) on `device` in `dtype`, its processor and the examples."""
    from transformers import AutoModelForImageTextToText

    notes = []
    if shape in TINY_SHAPES:
        from vlalign.config.schema import ModelConfig
        from vlalign.models import build

        built = build(
            ModelConfig(
                name=shape, size=size, image_size=workload["image_size"], cache_dir=cache_dir
            )
        )
        model = built.model.to(device=device, dtype=dtype)
        processor, family = built.processor, built.family
        notes.append(f"vlalign built-in {shape} (size {size}), random weights")
    else:
        cfg, processor = published_config_and_processor(shape, workload["image_size"], shrink)
        cfg._attn_implementation = attn
        torch.manual_seed(seed)
        with torch.device(device):
            model = AutoModelForImageTextToText.from_config(cfg, dtype=dtype)
        family = "llava" if shape.startswith("llava") else "qwen2_vl"
        notes.append(
            f"{shape} published hyper-parameters{' (shrunk widths/depths)' if shrink else ''}, "
            "random weights, local BPE tokenizer (ids < published vocab)"
        )
    model.set_attn_implementation(attn)
    return Setup(
        shape=shape,
        family=family,
        model=model,
        processor=processor,
        examples=make_examples(processor.tokenizer, workload, seed),
        image_size=workload["image_size"],
        dtype=dtype,
        device=device,
        notes=notes,
    )
