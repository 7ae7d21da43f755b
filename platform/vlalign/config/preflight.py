"""Pre-flight checks that need to look outside the recipe: where the model comes from, and
whether the DeepSpeed batch keys a recipe sets can be made from its batch fields.

`config.checks.check_recipe` calls the first two (problems wherever the recipe runs);
`vlalign validate` and `vlalign run` (when training on this machine) also call
`fetch_problems` (problems of loading the model here), so they refuse before any worker starts
(a DeepSpeed assertion or minutes of hub retries otherwise).

- A local model directory (or a cached hub model) whose config.json maps classes to custom
  code (`auto_map`) needs `model.trust_remote_code: true`.
- A hub id the hub says does not exist is refused (when the hub answers).
- fetch_problems: a hub id must be in the local Hugging Face cache, or the hub must answer:
  with HF_HUB_OFFLINE set, or no answer within PROBE_TIMEOUT_S, it fails at once naming the id.
- DeepSpeed's train_batch_size must equal micro_batch_size x grad_accum x num_workers.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit

from vlalign.config.schema import BUILTIN_MODELS, Recipe

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
PROBE_TIMEOUT_S = 3.0
_OFFLINE_VALUES = {"1", "true", "yes", "on"}


def _custom_code(config_file: Path) -> str | None:
    """The auto_map entries of a config.json (custom code), or None when there are none."""
    try:
        cfg = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    auto_map = cfg.get("auto_map") if isinstance(cfg, dict) else None
    if not auto_map:
        return None
    return ", ".join(f"{k} -> {v}" for k, v in auto_map.items())


def _local_model_problems(name: str, trust: bool) -> list[str]:
    d = Path(name).expanduser()
    cfg = d / "config.json"
    if d.is_file():
        return [f"model.name: {name!r} is a file, not a model directory"]
    if not cfg.is_file():
        return []  # reported by check_recipe (family detection) when it matters
    custom = _custom_code(cfg)
    if custom and not trust:
        return [
            f"model.name: {cfg} needs custom code ({custom}) and model.trust_remote_code is "
            "false: set it to true only if you trust that code"
        ]
    return []


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_reachable(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Can a TCP connection to the hub be opened within `timeout` (name lookup included)?"""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    t.start()
    t.join(timeout)
    return bool(ok)


def _cached_config(name: str, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        hit = try_to_load_from_cache(name, "config.json", revision=revision)
    except Exception:  # a malformed id or revision: the hub check below names it
        return None
    return Path(hit) if isinstance(hit, str) else None


def _hub_model_problems(name: str, revision: str | None, trust: bool) -> list[str]:
    cached = _cached_config(name, revision)
    if cached is not None:
        custom = _custom_code(cached)
        if custom and not trust:
            return [
                f"model.name: hub model {name!r} needs custom code ({custom}) and "
                "model.trust_remote_code is false: set it to true only if you trust that code"
            ]
        return []
    endpoint = _hub_endpoint()
    if _offline() or not hub_reachable(endpoint):
        return []  # fetch_problems says so where the model must load
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:
        return []
    try:
        HfApi(endpoint=endpoint).model_info(name, revision=revision, timeout=PROBE_TIMEOUT_S * 3)
    except RepositoryNotFoundError:
        return [
            f"model.name: hub model {name!r} does not exist (or is private: log in with "
            "`hf auth login` or set HF_TOKEN)"
        ]
    except RevisionNotFoundError:
        return [f"model.revision: {revision!r} does not exist for hub model {name!r}"]
    except Exception:  # the hub answered the probe but not this call: let loading decide
        return []
    return []


def model_source_problems(recipe: Recipe) -> list[str]:
    """Problems with where the recipe's model comes from (see the module docstring)."""
    m = recipe.model
    if m.name in BUILTIN_MODELS:
        return []
    if Path(m.name).expanduser().exists():
        return _local_model_problems(m.name, m.trust_remote_code)
    if not HUB_ID.match(m.name):
        return []  # check_recipe names it
    return _hub_model_problems(m.name, m.revision, m.trust_remote_code)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in _OFFLINE_VALUES


def fetch_problems(recipe: Recipe) -> list[str]:
    """Can the recipe's model be loaded on this machine? A hub id must be cached or the hub
    reachable (answers within PROBE_TIMEOUT_S, without HF_HUB_OFFLINE)."""
    m = recipe.model
    if m.name in BUILTIN_MODELS or Path(m.name).expanduser().exists() or not HUB_ID.match(m.name):
        return []
    if _cached_config(m.name, m.revision) is not None:
        return []
    if _offline():
        return [
            f"model.name: hub model {m.name!r} is not in the local Hugging Face cache and "
            "HF_HUB_OFFLINE is set: download it first or name a local directory"
        ]
    endpoint = _hub_endpoint()
    if not hub_reachable(endpoint):
        return [
            f"model.name: hub model {m.name!r} is not in the local Hugging Face cache and the "
            f"hub ({endpoint}) cannot be reached: download it first or name a local directory"
        ]
    return []


_BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def batch_problems(recipe: Recipe) -> list[str]:
    """DeepSpeed batch keys set in engine.overrides must agree with the recipe's batch fields."""
    t, o = recipe.train, recipe.engine.overrides
    workers = recipe.resources.num_workers
    set_keys = [k for k in _BATCH_KEYS if k in o]
    if not set_keys:
        return []
    problems = []
    for k in set_keys:
        if not isinstance(o[k], int) or isinstance(o[k], bool) or o[k] < 1:
            problems.append(f"engine.overrides.{k}: must be a positive integer (got {o[k]!r})")
    if problems:
        return problems
    mbs = o.get("train_micro_batch_size_per_gpu", t.micro_batch_size)
    accum = o.get("gradient_accumulation_steps", t.grad_accum)
    total = o.get("train_batch_size", mbs * accum * workers)
    if total != mbs * accum * workers:
        problems.append(
            f"engine.overrides.train_batch_size: {total} cannot be made from micro batch {mbs} "
            f"x grad_accum {accum} x resources.num_workers {workers} = {mbs * accum * workers}: "
            "set train.micro_batch_size / train.grad_accum instead of DeepSpeed's keys"
        )
    elif mbs != t.micro_batch_size or accum != t.grad_accum:
        problems.append(
            f"engine.overrides: {', '.join(set_keys)} disagree with train.micro_batch_size "
            f"{t.micro_batch_size} / train.grad_accum {t.grad_accum} (the loop uses the train "
            "section): set the batch there"
        )
    return problems
