"""What `--model` names, and loading it: built-in, local directory, MLflow model or run.

References (`resolve_model_ref`):
- `builtin:NAME`: a built-in tiny model (tiny-llava, ...), with the recipe's model settings
  (seed, size, cache_dir) — a base-model evaluation;
- `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/RUN_ID/PATH`: downloaded by the `fetch`
  the caller passes (the tracking layer's `MlflowFetch`: evaluation never imports MLflow) into a
  temporary folder, then loaded as a PATH;
- a RUN id (32 hex digits): the model logged by that run (MLflow logged models whose
  source_run_id is the run), else the run's artifacts;
- a PATH: a directory holding one exported model: a PEFT adapter (adapter_config.json) or a
  full/merged model (config.json + safetensors), at the top or in one shallowest sub-folder (a
  downloaded MLflow model keeps it under artifacts/export/).

An adapter's base model is, in this order: `vlalign_export.json`'s base_model (written by the
tracking area beside the export), a `recipe.yaml` found with it, adapter_config.json's
`base_model_name_or_path` when that is a local directory (a materialized built-in is recognised
and rebuilt from its spec, even from its folder name alone), then the `--recipe`'s model
section, and without a recipe the recorded name as a hub id.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from vlalign.config.schema import BUILTIN_MODELS, ModelConfig, Recipe
from vlalign.errors import VlalignError

EXPORT_INFO = "vlalign_export.json"
RECIPE_FILE = "recipe.yaml"
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_BUILTIN_KEY = re.compile(r"^(tiny-[a-z0-9-]+?)-(nano|small)-px(\d+)-seed(\d+)-v\d+$")
_MAX_DEPTH = 4
# Downloads an MLflow model reference (models:/..., runs:/..., a run id) into a folder and
# returns the local directory. Given by the tracking layer; picklable for Ray workers.
Fetch = Callable[[str, Path], Path]


@dataclass
class ModelSpec:
    """A resolved, picklable model reference (what each Ray worker loads).

    kind: "builtin" | "full" | "adapter". path: the local model/adapter directory (None for a
    built-in). base: the model config to build (the built-in, the full model, or an adapter's
    base). reference: for a fully fine-tuned export, the base it started from (the DPO
    reference of implicit rewards). value_head: a reward model's head weights file (the export
    is then scored as a reward model). ref: what the user wrote (shown in the scorecard).
    """

    ref: str
    kind: str
    base: ModelConfig
    path: str | None = None
    reference: ModelConfig | None = None
    value_head: str | None = None


@dataclass
class LoadedModel:
    """A model ready to evaluate.

    has_adapter: a PEFT model (its reference = the same model, adapter disabled);
    reference_model: a separate reference (full fine-tunes with a recorded base);
    reward_model: a `vlalign.models.value_head.RewardModel` (input_ids [N, T] -> rewards [N]).
    """

    model: object
    processor: object
    family: str
    has_adapter: bool
    reference_model: object | None = None
    reward_model: object | None = None


def _is_full_model(d: Path) -> bool:
    return (d / "config.json").is_file() and any(d.glob("*.safetensors"))


def _is_model_dir(d: Path) -> bool:
    return (d / "adapter_config.json").is_file() or _is_full_model(d)


def _model_dirs(root: Path) -> list[Path]:
    """The shallowest directories under root (itself included) holding an adapter or a full model."""
    level = [root]
    for _ in range(_MAX_DEPTH + 1):
        hits = [d for d in level if _is_model_dir(d)]
        if hits:
            return hits
        level = sorted(c for d in level for c in d.iterdir() if c.is_dir())
    return []


def _find_file(root: Path, name: str) -> Path | None:
    hits = sorted(root.rglob(name), key=lambda p: (len(p.parts), str(p)))
    return hits[0] if hits else None


def _builtin_from_dir(d: Path, cache_dir: str | None) -> ModelConfig | None:
    """A materialized built-in directory -> the config that rebuilds it."""
    info = d / "vlalign_builtin.json"
    spec = None
    if info.is_file():
        spec = json.loads(info.read_text()).get("spec")
    else:
        m = _BUILTIN_KEY.match(d.name)
        if m and m.group(1) in BUILTIN_MODELS:
            px = int(m.group(3))
            spec = {
                "name": m.group(1),
                "size": m.group(2),
                "image_size": px,
                "seed": int(m.group(4)),
            }
    if not spec:
        return None
    return ModelConfig(
        name=spec["name"],
        seed=spec.get("seed", 0),
        size=spec.get("size", "nano"),
        image_size=spec.get("image_size"),
        cache_dir=cache_dir,
    )


def _recorded_base(root: Path, adapter: Path, recipe: Recipe | None) -> ModelConfig | None:
    cache_dir = recipe.model.cache_dir if recipe else None
    info = _find_file(root, EXPORT_INFO)
    if info is not None:
        base = json.loads(info.read_text()).get("base_model")
        if base:
            cfg = ModelConfig.model_validate(base)
            return cfg.model_copy(update={"cache_dir": cache_dir}) if cache_dir else cfg
    rfile = _find_file(root, RECIPE_FILE)
    if rfile is not None:
        try:
            data = yaml.safe_load(rfile.read_text()) or {}
            cfg = ModelConfig.model_validate(data.get("model") or {})
            return cfg.model_copy(update={"cache_dir": cache_dir}) if cache_dir else cfg
        except Exception:  # not a resolved recipe: fall through to the other sources
            pass
    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if base:
        if base in BUILTIN_MODELS:
            return ModelConfig(name=base, cache_dir=cache_dir)
        bdir = Path(base)
        builtin = _builtin_from_dir(bdir, cache_dir)
        if builtin is not None:
            if cache_dir is None and (bdir / "vlalign_builtin.json").is_file():
                builtin = builtin.model_copy(update={"cache_dir": str(bdir.parent)})
            return builtin
        if bdir.is_dir() and (bdir / "config.json").is_file():
            family = recipe.model.family if recipe else "auto"
            return ModelConfig(name=str(bdir), family=family)
        if recipe is None:  # a hub id (or a path from another machine): try it as a hub id
            return ModelConfig(name=base)
    return recipe.model if recipe else None


def spec_from_path(ref: str, path: Path, recipe: Recipe | None) -> ModelSpec:
    """A local directory -> ModelSpec (adapter or full model)."""
    dirs = _model_dirs(path)
    if not dirs:
        raise VlalignError(
            f"--model {ref}: {path} holds no model (no adapter_config.json, no config.json with "
            "*.safetensors, up to 4 folders deep)"
        )
    if len(dirs) > 1:
        listing = ", ".join(str(d.relative_to(path)) for d in dirs)
        raise VlalignError(f"--model {ref}: several models under {path} ({listing}); name one")
    d = dirs[0]
    head = d / "value_head.safetensors"
    value_head = str(head) if head.is_file() else None
    if (d / "adapter_config.json").is_file():
        base = _recorded_base(path, d, recipe)
        if base is None:
            raise VlalignError(
                f"--model {ref}: adapter {d} records no usable base model; pass --recipe whose "
                "model section names the base"
            )
        return ModelSpec(ref=ref, kind="adapter", base=base, path=str(d), value_head=value_head)
    family = recipe.model.family if recipe else "auto"
    dtype = recipe.model.dtype if recipe else "float32"
    info_file = _find_file(path, EXPORT_INFO)
    info = json.loads(info_file.read_text()) if info_file is not None else {}
    if family == "auto":
        family = info.get("family", "auto")
    reference = None
    if info.get("kind") == "full" and info.get("base_model"):
        reference = ModelConfig.model_validate(info["base_model"])
        if recipe and recipe.model.cache_dir:
            reference = reference.model_copy(update={"cache_dir": recipe.model.cache_dir})
    return ModelSpec(
        ref=ref,
        kind="full",
        base=ModelConfig(name=str(d), family=family, dtype=dtype),
        path=str(d),
        reference=reference,
        value_head=value_head,
    )


def is_mlflow_ref(ref: str) -> bool:
    """True for `models:/...`, `runs:/...` or a bare run id: a model only MLflow can fetch."""
    return ref.startswith(("models:/", "runs:/")) or bool(_RUN_ID.match(ref))


def resolve_model_ref(
    ref: str,
    recipe: Recipe | None = None,
    fetch: Fetch | None = None,
    download_dir: str | Path | None = None,
    registry_uri: str | None = None,
) -> ModelSpec:
    """Turn `--model` into a ModelSpec (MLflow models are fetched into download_dir or a temp dir).

    fetch: how MLflow references are downloaded (the tracking layer's
    `vlalign.tracking.model_fetch.MlflowFetch(uri)`); None refuses them.
    """
    if not ref:
        raise VlalignError(
            "--model is required (PATH, models:/NAME@ALIAS, runs:/..., RUN id, builtin:NAME)"
        )
    if ref.startswith("builtin:"):
        name = ref.removeprefix("builtin:")
        if name not in BUILTIN_MODELS:
            raise VlalignError(
                f"--model {ref}: no built-in {name!r} (choose from {list(BUILTIN_MODELS)})"
            )
        base = recipe.model if recipe else ModelConfig()
        return ModelSpec(
            ref=ref, kind="builtin", base=base.model_copy(update={"name": name, "family": "auto"})
        )
    path = Path(ref)
    if path.exists():
        if not path.is_dir():
            raise VlalignError(f"--model {ref}: a model is a directory, this is a file")
        return spec_from_path(ref, path.resolve(), recipe)
    if is_mlflow_ref(ref):
        if fetch is None:
            raise VlalignError(
                f"--model {ref}: an MLflow model, and no MLflow store to fetch it from "
                "(pass fetch=vlalign.tracking.model_fetch.MlflowFetch(tracking_uri))"
            )
        dst = (
            Path(download_dir)
            if download_dir
            else Path(tempfile.mkdtemp(prefix="vlalign-eval-model-"))
        )
        dst.mkdir(parents=True, exist_ok=True)
        local = fetch(ref, dst)
        return spec_from_path(ref, local, recipe)
    raise VlalignError(
        f"--model {ref}: no such directory, and not models:/NAME@ALIAS, runs:/RUN_ID/PATH, "
        "a run id or builtin:NAME"
    )


def load_model(spec: ModelSpec, device: str = "cpu") -> LoadedModel:
    """Build the model a spec names, in eval mode on `device`."""
    from vlalign.models import build
    from vlalign.models.processors import load_processor

    built = build(spec.base)
    model, processor = built.model, built.processor
    if spec.kind == "adapter":
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, spec.path)
        except (OSError, ValueError, RuntimeError) as e:
            raise VlalignError(
                f"--model {spec.ref}: cannot attach adapter {spec.path}: {e}"
            ) from None
        if any(Path(spec.path).glob("tokenizer*")):
            processor = load_processor(spec.path, built.family, spec.base.trust_remote_code)
    model.to(device)
    model.eval()
    loaded = LoadedModel(
        model=model, processor=processor, family=built.family, has_adapter=spec.kind == "adapter"
    )
    if spec.value_head:
        loaded.reward_model = _reward_model(model, spec.value_head, device)
    elif spec.reference is not None:
        loaded.reference_model = build(spec.reference).model.to(device).eval()
    return loaded


def _reward_model(policy, head_file: str, device: str):
    """RewardModel(policy) with the exported value head loaded (strict: names must match)."""
    from safetensors.torch import load_file

    from vlalign.models.value_head import RewardModel

    rm = RewardModel(policy)
    try:
        rm.value_head.load_state_dict(load_file(head_file))
    except RuntimeError as e:
        raise VlalignError(f"{head_file}: not this model's value head: {e}") from None
    return rm.to(device).eval()
