"""The trained policy as an MLflow pyfunc model: (image, prompt) -> generated text.

What is logged (artifacts of the MLflow model):
- `export`: the exported directory the training loop writes: a PEFT adapter
  (adapter_config.json + adapter_model.safetensors) or a merged model (config.json +
  *.safetensors), plus the processor files;
- `vlalign`: `recipe.yaml` (the resolved recipe) and `vlalign_export.json` (kind, family,
  base model spec).

Loading (`mlflow.pyfunc.load_model("models:/NAME@champion")`) rebuilds the base model from the
recipe's `model` section with `vlalign.models.build` (a built-in tiny model is rebuilt with
identical random weights from its seed) and attaches the adapter with
`peft.PeftModel.from_pretrained`. The model is logged "from code" (pyfunc_entry.py), so no
pickled Python object is stored. `model_config={"cache_dir": ..., "device": ...}` at load time
picks where a built-in base is materialized and where the model runs.

Request: a pandas DataFrame with columns `image` (PNG/JPEG bytes or a base64 string of them; null
for a text-only prompt), `prompt` (str) and optionally `max_new_tokens` (int). Response: one
generated string per row (greedy decoding).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import tempfile
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml

from vlalign.config import Recipe, recipe_to_yaml
from vlalign.errors import VlalignError

EXPORT_INFO = "vlalign_export.json"
RECIPE_FILE = "recipe.yaml"
FORMAT = 1
ENTRY = Path(__file__).with_name("pyfunc_entry.py")


@dataclass
class LoadedPolicy:
    """A policy ready to generate: model (eval mode), processor, family and its recipe."""

    model: Any
    processor: Any
    family: str
    recipe: Recipe
    device: str


def export_kind(export_dir: str | Path) -> str:
    """'adapter' (PEFT adapter dir) or 'merged' (a full model dir); VlalignError otherwise."""
    d = Path(export_dir)
    if (d / "adapter_config.json").is_file():
        return "adapter"
    if (d / "config.json").is_file():
        return "merged"
    raise VlalignError(
        f"{d}: not an exported model (no adapter_config.json for an adapter, no config.json "
        "for a merged model)"
    )


def export_info(export_dir: str | Path, recipe: Recipe) -> dict[str, Any]:
    """What the loader needs besides the files: kind, family and the base model spec."""
    return {
        "format": FORMAT,
        "kind": export_kind(export_dir),
        "family": recipe.family,
        "base_model": recipe.model.model_dump(mode="json"),
    }


def _recipe_from(text: str, where: str) -> Recipe:
    from pydantic import ValidationError

    try:
        data = yaml.safe_load(text)
        return Recipe.model_validate(data)
    except (yaml.YAMLError, ValidationError) as e:
        raise VlalignError(f"{where}: not a valid resolved recipe: {e}") from None


def load_policy(
    export_dir: str | Path,
    recipe: Recipe,
    kind: str | None = None,
    cache_dir: str | None = None,
    device: str = "cpu",
) -> LoadedPolicy:
    """Rebuild the policy from an exported directory and its recipe.

    adapter: base model from recipe.model (cache_dir overrides where a built-in is materialized)
    + PeftModel.from_pretrained(export_dir). merged: the model in export_dir itself.
    """
    from peft import PeftModel

    from vlalign.models import build
    from vlalign.models.processors import load_processor

    export_dir = Path(export_dir)
    kind = kind or export_kind(export_dir)
    mcfg = recipe.model
    if kind == "adapter":
        if cache_dir is not None:
            mcfg = mcfg.model_copy(update={"cache_dir": cache_dir})
        built = build(mcfg)
        model = PeftModel.from_pretrained(built.model, str(export_dir))
        family = built.family
    else:
        mcfg = mcfg.model_copy(
            update={"name": str(export_dir), "family": recipe.family, "revision": None}
        )
        built = build(mcfg)
        model, family = built.model, built.family
    processor = load_processor(export_dir, family, mcfg.trust_remote_code)
    model.to(device)
    model.eval()
    return LoadedPolicy(model, processor, family, recipe, device)


def decode_image(value: Any, row: int):
    """PNG/JPEG bytes or base64 text -> PIL RGB image (None for a missing image)."""
    from PIL import Image, UnidentifiedImageError

    if value is None or (isinstance(value, float) and value != value):  # None / NaN
        return None
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise VlalignError(f"request row {row}: image is not valid base64") from None
    if not isinstance(value, (bytes, bytearray)):
        raise VlalignError(
            f"request row {row}: image must be PNG/JPEG bytes or base64 text, got {type(value).__name__}"
        )
    try:
        img = Image.open(io.BytesIO(value))
        img.load()
    except (UnidentifiedImageError, OSError):
        raise VlalignError(f"request row {row}: image bytes are not a readable image") from None
    return img.convert("RGB")


def generate(policy: LoadedPolicy, images: list, prompt: str, max_new_tokens: int) -> str:
    """Greedy answer to one (images, prompt). input_ids [1, P] -> new tokens [N] -> text."""
    import torch

    from vlalign.models.inputs import ChatEncoder

    enc = ChatEncoder(policy.processor, policy.family, policy.recipe.data.max_length)
    p = enc.encode_prompt(images, prompt)
    ids = p.input_ids.unsqueeze(0).to(policy.device)
    extra = {k: v.to(policy.device) for k, v in p.image_inputs.items()}
    tok = enc.tokenizer
    with torch.no_grad():
        out = policy.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
            **extra,
        )
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


class VLMPolicy(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: load_context rebuilds the policy; predict generates one answer per row."""

    def load_context(self, context) -> None:
        cfg = dict(context.model_config or {})
        meta_dir = Path(context.artifacts["vlalign"])
        info = json.loads((meta_dir / EXPORT_INFO).read_text())
        if info.get("format") != FORMAT:
            raise VlalignError(f"{EXPORT_INFO}: unsupported format {info.get('format')!r}")
        recipe_path = meta_dir / RECIPE_FILE
        recipe = _recipe_from(recipe_path.read_text(), str(recipe_path))
        self.policy = load_policy(
            context.artifacts["export"],
            recipe,
            kind=info["kind"],
            cache_dir=cfg.get("cache_dir") or None,
            device=cfg.get("device") or "cpu",
        )

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list[str]:
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "prompt" not in df.columns:
            raise VlalignError("request: column 'prompt' is required (and 'image' for images)")
        default_n = int((params or {}).get("max_new_tokens") or 0) or (
            self.policy.recipe.eval.max_new_tokens
        )
        answers = []
        for i, row in enumerate(df.to_dict("records")):
            img = decode_image(row.get("image"), i)
            n = row.get("max_new_tokens")
            n = int(n) if n is not None and n == n else default_n
            if n < 1:
                raise VlalignError(f"request row {i}: max_new_tokens must be >= 1, got {n}")
            answers.append(generate(self.policy, [img] if img else [], str(row["prompt"]), n))
        return answers


def signature():
    """Request/response schema: image (binary, optional), prompt (str), max_new_tokens (long, optional)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema(
            [
                ColSpec("binary", "image", required=False),
                ColSpec("string", "prompt"),
                ColSpec("long", "max_new_tokens", required=False),
            ]
        ),
        outputs=Schema([ColSpec("string")]),
    )


def pip_requirements() -> list[str]:
    """The few packages a serving environment needs (vlalign itself brings the rest)."""
    out = []
    for lib in ("vlalign", "torch", "transformers", "peft", "pillow", "pyyaml", "safetensors"):
        try:
            out.append(f"{lib}=={metadata.version(lib).split('+')[0]}")
        except metadata.PackageNotFoundError:
            out.append(lib)
    return out


def log_policy_model(export_dir: str | Path, recipe: Recipe, name: str = "model"):
    """Log the exported policy as a pyfunc model in the ACTIVE run; returns MLflow's ModelInfo."""
    export_dir = Path(export_dir)
    info = export_info(export_dir, recipe)
    with tempfile.TemporaryDirectory(prefix="vlalign-model-") as tmp:
        meta = Path(tmp) / "vlalign"
        meta.mkdir()
        (meta / EXPORT_INFO).write_text(json.dumps(info, indent=2))
        (meta / RECIPE_FILE).write_text(recipe_to_yaml(recipe))
        with warnings.catch_warnings():
            # The signature below is explicit, so MLflow's advice to infer one from an input
            # example (which would load and run the model at logging time) is noise.
            warnings.filterwarnings("ignore", message=r".*input example was not provided")
            return mlflow.pyfunc.log_model(
                name=name,
                python_model=str(ENTRY),
                artifacts={"export": str(export_dir), "vlalign": str(meta)},
                signature=signature(),
                pip_requirements=pip_requirements(),
                metadata={"vlalign_kind": info["kind"], "vlalign_family": info["family"]},
                # load-time options (mlflow.pyfunc.load_model(..., model_config={...})); "": default
                model_config={"cache_dir": "", "device": "cpu"},
            )
