"""Built-in tiny VLMs: real transformers architectures built from configs with random weights.

Each is a genuine LLaVA / Qwen2-VL / Idefics3 model (same classes as the 7B checkpoints), small
enough to train on a laptop CPU, with a locally trained tokenizer and the matching processor.
`materialize()` writes one to a cache directory once (safetensors), so every process and Ray
worker loads identical weights.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForImageTextToText,
    Idefics3Config,
    Idefics3Processor,
    LlamaConfig,
    LlavaConfig,
    LlavaProcessor,
    PreTrainedModel,
    Qwen2VLConfig,
)
from transformers.models.clip import CLIPVisionConfig
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.idefics3 import Idefics3VisionConfig
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vlalign.cache import cache_dir
from vlalign.models.processors import Qwen2VLImageOnlyProcessor
from vlalign.models.tokenizer import train_tokenizer

FORMAT_VERSION = 1  # bump when a built-in's construction changes: invalidates caches

LLAVA_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}USER: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{% else %} ASSISTANT:"
    "{% if m['content'] is string %} {{ m['content'] }}{% else %}"
    "{% for c in m['content'] %} {{ c['text'] }}{% endfor %}{% endif %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)

# Qwen2-VL's special tokens (the chat turns, the vision span and its placeholders).
QWEN_SPECIALS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for m in messages %}"
    "{{ m['role'] | capitalize }}"
    "{% if m['content'] is string %}: {{ m['content'] }}{% else %}"
    "{% if m['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

_SIZES = {
    # LM hidden, LM layers, heads, kv heads, MLP; vision hidden, vision layers
    "nano": dict(hidden=64, layers=2, heads=4, kv=2, mlp=128, vhidden=32, vlayers=2),
    "small": dict(hidden=192, layers=4, heads=6, kv=2, mlp=512, vhidden=64, vlayers=2),
}


@dataclass(frozen=True)
class TinySpec:
    """What identifies a built-in tiny model's weights."""

    name: str
    seed: int = 0
    size: str = "nano"
    image_size: int | None = None

    def default_image_size(self) -> int:
        return {"tiny-llava": 32, "tiny-qwen2-vl": 32, "tiny-idefics3": 32}[self.name]

    @property
    def resolved_image_size(self) -> int:
        return self.image_size or self.default_image_size()

    @property
    def key(self) -> str:
        return f"{self.name}-{self.size}-px{self.resolved_image_size}-seed{self.seed}-v{FORMAT_VERSION}"


def _text_config(vocab: int, s: dict, **extra) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=s["hidden"],
        intermediate_size=s["mlp"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv"],
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        **extra,
    )


def _build_llava(spec: TinySpec):
    px, patch = spec.resolved_image_size, 8
    s = _SIZES[spec.size]
    tok = train_tokenizer(["<image>"], LLAVA_TEMPLATE)
    n_img = (px // patch) ** 2
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=s["vhidden"],
            intermediate_size=s["vhidden"] * 2,
            num_hidden_layers=s["vlayers"],
            num_attention_heads=2,
            image_size=px,
            patch_size=patch,
            projection_dim=s["vhidden"],
        ),
        text_config=_text_config(
            len(tok),
            s,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        ),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=n_img,
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": px}, crop_size={"height": px, "width": px}
    )
    proc = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    return cfg, proc


def _build_qwen2_vl(spec: TinySpec):
    px, patch = spec.resolved_image_size, 8
    s = _SIZES[spec.size]
    tok = train_tokenizer(list(QWEN_SPECIALS), QWEN_TEMPLATE)
    head_dim = s["hidden"] // s["heads"]
    half = head_dim // 2
    t = half // 4
    mrope = [t, (half - t) // 2, half - t - (half - t) // 2]
    ids = {k: tok.convert_tokens_to_ids(k) for k in QWEN_SPECIALS}
    text = dict(
        vocab_size=len(tok),
        hidden_size=s["hidden"],
        intermediate_size=s["mlp"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv"],
        max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "mrope_section": mrope, "rope_theta": 10000.0},
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=ids["<|im_end|>"],
    )
    cfg = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(
            depth=s["vlayers"],
            embed_dim=s["vhidden"],
            hidden_size=s["hidden"],
            num_heads=2,
            mlp_ratio=2,
            patch_size=patch,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_chans=3,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=px * px,
        max_pixels=px * px,
        patch_size=patch,
        merge_size=2,
        temporal_patch_size=2,
    )
    proc = Qwen2VLImageOnlyProcessor(
        image_processor=image_processor, tokenizer=tok, chat_template=QWEN_TEMPLATE
    )
    return cfg, proc


def _build_idefics3(spec: TinySpec):
    px, patch, scale = spec.resolved_image_size, 8, 2
    s = _SIZES[spec.size]
    specials = [
        "<fake_token_around_image>",
        "<image>",
        "<global-img>",
        "<end_of_utterance>",
        "<|begin_of_text|>",
    ]
    tok = train_tokenizer(specials, IDEFICS3_TEMPLATE)
    seq_len = (px // patch) ** 2 // (scale * scale)
    cfg = Idefics3Config(
        vision_config=Idefics3VisionConfig(
            hidden_size=s["vhidden"],
            intermediate_size=s["vhidden"] * 2,
            num_hidden_layers=s["vlayers"],
            num_attention_heads=2,
            image_size=px,
            patch_size=patch,
        ),
        text_config=_text_config(
            len(tok),
            s,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.convert_tokens_to_ids("<end_of_utterance>"),
        ),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
        tie_word_embeddings=False,
    )
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": px},
        max_image_size={"longest_edge": px},
    )
    proc = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_len=seq_len,
        chat_template=IDEFICS3_TEMPLATE,
    )
    return cfg, proc


_BUILDERS = {
    "tiny-llava": _build_llava,
    "tiny-qwen2-vl": _build_qwen2_vl,
    "tiny-idefics3": _build_idefics3,
}


def build_tiny(spec: TinySpec) -> tuple[PreTrainedModel, object]:
    """Build a tiny model with random weights from `spec.seed`, and its processor (in memory)."""
    cfg, proc = _BUILDERS[spec.name](spec)
    torch.manual_seed(spec.seed)
    model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.float32)
    model.generation_config.pad_token_id = proc.tokenizer.pad_token_id
    model.generation_config.eos_token_id = cfg.get_text_config().eos_token_id
    return model, proc


def default_cache_dir() -> Path:
    """~/.cache/vlalign/models (XDG_CACHE_HOME respected)."""
    return cache_dir("models")


def materialize(spec: TinySpec, cache_dir: str | Path | None = None) -> Path:
    """Save a built-in model once to `cache_dir/spec.key` (atomically) and return its path."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / spec.key
    if (target / "vlalign_builtin.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    model, proc = build_tiny(spec)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.key}.", dir=root))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        proc.save_pretrained(tmp)
        (tmp / "vlalign_builtin.json").write_text(
            json.dumps({"spec": spec.__dict__, "key": spec.key})
        )
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race: its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
