"""Reading a recipe: safe YAML, `extends` chains, `a.b.c=value` overrides, schema validation.

Every problem is collected and reported at once, each naming the file and the key path, with a
"did you mean" suggestion for misspelled keys.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from vlalign import catalog
from vlalign._shipped import recipes_dir
from vlalign.config.schema import METHOD_SECTIONS, Recipe
from vlalign.errors import RecipeError

RECIPES_DIR = recipes_dir()  # package data when installed, the checkout's recipes/ otherwise
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of YAML; anything this big is a mistake
MAX_RECIPE_VALUES = 100_000  # values after YAML aliases expand (a "billion laughs" refuses)


def shipped_recipes() -> dict[str, Path]:
    """Shipped recipes by name (`tiny/dpo`) -> path (see vlalign._shipped)."""
    if not RECIPES_DIR.is_dir():
        return {}
    return {
        str(p.relative_to(RECIPES_DIR).with_suffix("")): p
        for p in sorted(RECIPES_DIR.rglob("*.yaml"))
    }


def find_recipe(ref: str | Path, relative_to: Path | None = None) -> Path:
    """Resolve a recipe reference: a file path (absolute or relative) or a shipped name."""
    candidates = []
    p = Path(ref)
    if relative_to is not None and not p.is_absolute():
        candidates.append(relative_to / p)
    candidates.append(p)
    for c in candidates:
        if c.is_file():
            return c
    shipped = shipped_recipes()
    key = str(ref).removesuffix(".yaml")
    if key in shipped:
        return shipped[key]
    hint = difflib.get_close_matches(key, list(shipped), n=1)
    extra = f" (did you mean shipped recipe {hint[0]!r}?)" if hint else ""
    raise RecipeError(str(ref), [f"no such recipe file or shipped recipe name{extra}"])


def _count_values(data: Any, limit: int) -> int:
    """Values in a loaded YAML document with aliases expanded, counting stops past `limit`.

    safe_load shares an aliased node instead of copying it, so a few lines of anchors can stand
    for billions of values that every later copy or validation would walk."""
    count, stack = 0, [data]
    while stack and count <= limit:
        node = stack.pop()
        count += 1
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return count


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise RecipeError(str(path), [f"cannot read: {e.strerror}"]) from None
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(
            str(path),
            [f"{size / 1e6:.1f} MB is larger than a recipe may be ({MAX_RECIPE_BYTES >> 20} MiB)"],
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RecipeError(str(path), [f"not valid YAML: {e}"]) from None
    except UnicodeDecodeError:
        raise RecipeError(str(path), ["not UTF-8 text"]) from None
    except (OSError, RecursionError) as e:
        raise RecipeError(str(path), [f"cannot read: {e}"]) from None
    if _count_values(data, MAX_RECIPE_VALUES) > MAX_RECIPE_VALUES:
        raise RecipeError(
            str(path),
            [
                f"expands to more than {MAX_RECIPE_VALUES} values through YAML aliases "
                "(an alias bomb?): refused"
            ],
        )
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(str(path), [f"top level must be a mapping, got {type(data).__name__}"])
    return data


def _switches_method(base: dict[str, Any], over: dict[str, Any]) -> bool:
    """True when `over` names another method than `base`: its method section replaces the
    base's (a DPO knob must not leak into an SFT recipe that extends a DPO one)."""
    b, o = base.get("method"), over.get("method")
    return (
        isinstance(b, dict)
        and isinstance(o, dict)
        and "name" in o
        and o["name"] != b.get("name", "sft")
    )


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Merge `over` into a copy of `base`; nested mappings merge, everything else replaces.

    A `method` section that names another method replaces the base's whole."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k == "method" and _switches_method(base, over):
            out[k] = copy.deepcopy(v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _load_chain(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(s) for s in (*seen, path))
        raise RecipeError(str(path), [f"extends: cycle {chain}"])
    data = _read_yaml(path)
    base_ref = data.get("extends")
    if base_ref is None:
        return data
    if not isinstance(base_ref, str):
        raise RecipeError(
            str(path), ["extends: must be a string (file path or shipped recipe name)"]
        )
    try:
        base_path = find_recipe(base_ref, relative_to=path.parent)
    except RecipeError as e:
        raise RecipeError(str(path), [f"extends: {base_ref!r}: {e.problems[0]}"]) from None
    merged = deep_merge(_load_chain(base_path, (*seen, path)), data)
    merged["extends"] = base_ref
    return merged


def _schema_at(path: list[str]) -> type[BaseModel] | None:
    """The pydantic model for a key path (['train']) or None when the path is not a section.

    A `method` path carries its method name as a second element (['method', 'dpo'])."""
    model: type[BaseModel] = Recipe
    if path[:1] == ["method"] and len(path) >= 2 and path[1] in METHOD_SECTIONS:
        model, path = METHOD_SECTIONS[path[1]], path[2:]
    for key in path:
        field = model.model_fields.get(key)
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def _suggest(path: list[str], shown: list[str]) -> str:
    model = _schema_at(path[:-1])
    if model is None:
        return ""
    hint = difflib.get_close_matches(path[-1], list(model.model_fields), n=1, cutoff=0.5)
    return f" (did you mean {'.'.join([*shown[:-1], hint[0]])!r}?)" if hint else ""


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=3e-5` -> (['train', 'lr'], '3e-5'); the value is YAML-parsed, the schema coerces."""
    if "=" not in text:
        raise RecipeError("<command line>", [f"override {text!r}: expected key.path=value"])
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise RecipeError("<command line>", [f"override {text!r}: empty key"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a recipe dict (unknown keys are caught by validation)."""
    out = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        method = out.get("method")
        switches = isinstance(method, dict) and value != method.get("name", "sft")
        if parts == ["method", "name"] and switches:  # another method: start its section anew
            out["method"] = {}
        node = out
        for p in parts[:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = {}
                node[p] = nxt
            node = nxt
        node[parts[-1]] = value
    return out


def _override_for(loc: list[str], overrides: list[str]) -> str | None:
    """The last command-line override that set `loc` or a key above or below it."""
    for text in reversed(overrides):
        parts = [p for p in text.split("=", 1)[0].strip().split(".") if p]
        n = min(len(parts), len(loc))
        if n and parts[:n] == loc[:n]:
            return text
    return None


def recipe_problems(ref: str | Path, problems: list[str], overrides: list[str] | None):
    """A RecipeError for problems found by checks: a problem whose key path a command-line
    override set names that override, and when all do, the error names the command line."""
    marked = []
    for p in problems:
        key = p.split(":", 1)[0].strip()
        source = _override_for(key.split("."), overrides or []) if " " not in key else None
        marked.append(f"{p} [from command-line override {source!r}]" if source else p)
    if overrides and all("[from command-line override" in p for p in marked):
        return RecipeError(f"command-line override (on {ref})", marked)
    return RecipeError(str(ref), marked)


def _format_errors(err: ValidationError, overrides: list[str] | None = None) -> list[str]:
    problems = []
    for e in err.errors():
        loc = [str(x) for x in e["loc"]]
        # A method section's errors carry the method's tag: method.dpo.beta -> method.beta.
        tag = loc[1] if loc[:1] == ["method"] and loc[1:2] and loc[1] in METHOD_SECTIONS else None
        shown = loc[:1] + loc[2:] if tag else loc
        key = ".".join(shown) or "<top level>"
        if e["type"] == "extra_forbidden":
            where = f" of method {tag!r}" if tag else ""
            msg = f"{key}: unknown key{where}{_suggest(loc, shown)}"
        elif e["type"] == "missing":
            msg = f"{key}: required key is missing"
        elif shown == ["method", "loss"] and e["type"] == "literal_error":
            fits = ", ".join(catalog.losses_for(loc[1]))
            msg = (
                f"{key}: loss {e.get('input')!r} does not belong to method {loc[1]!r} "
                f"(choose from {fits}; `vlalign ls --catalog` lists them all)"
            )
        elif e["type"] == "union_tag_invalid":
            tag = e.get("ctx", {}).get("tag")
            msg = f"{key}.name: unknown method {tag!r}; valid methods: {', '.join(METHOD_SECTIONS)}"
        elif e["type"] == "value_error" and isinstance(e.get("input"), dict):
            text = e["msg"].removeprefix("Value error, ")
            field, sep, rest = text.partition(": ")  # validators name their field first
            if sep and field.split(".", 1)[0].isidentifier():  # a field, or field.<sub-key>
                key, text = f"{key}.{field}", rest
            msg = f"{key}: {text}"
        else:
            got = e.get("input")
            shown_v = repr(got) if not isinstance(got, dict) else "a mapping"
            msg = f"{key}: {e['msg']} (got {shown_v})"
        source = _override_for(shown, overrides or []) if loc else None
        problems.append(f"{msg} [from command-line override {source!r}]" if source else msg)
    return problems


def resolve_recipe_dict(path: str | Path, overrides: list[str] | None = None) -> tuple[Path, dict]:
    """Read a recipe file (following `extends`) and apply overrides; returns (file, raw dict)."""
    file = find_recipe(path)
    data = _load_chain(file)
    data = apply_overrides(data, overrides or [])
    return file, data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load and validate a recipe. Raises RecipeError listing every problem with its key path."""
    file, data = resolve_recipe_dict(path, overrides)
    data.setdefault("name", file.stem if file.parent == RECIPES_DIR else _default_name(file))
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        problems = _format_errors(e, overrides)
        if overrides and all("[from command-line override" in p for p in problems):
            raise RecipeError(f"command-line override (on {file})", problems) from None
        raise RecipeError(str(file), problems) from None


def _default_name(file: Path) -> str:
    try:
        rel = file.resolve().relative_to(RECIPES_DIR)
        return str(rel.with_suffix("")).replace("/", "-")
    except ValueError:
        return file.stem


def recipe_to_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (logged as an artifact; re-loadable)."""
    data = recipe.model_dump(mode="json")
    data.pop("extends", None)
    return yaml.safe_dump(data, sort_keys=False)
