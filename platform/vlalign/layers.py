"""The layers of vlalign, bottom to top: a module imports only from its own layer or below.

Read by `tests/unit/test_import_graph.py`, which parses every module of `platform/vlalign` and
`data_pipeline` (static imports, those inside functions included) and fails on any import cycle
between modules and on any import from a higher layer into a lower one. Torch-free data only.

A module belongs to the layer of the longest name below that prefixes it (`vlalign.models`
holds `vlalign.models.inputs`), except that every `commands` module (`vlalign.cli` registers
them: `vlalign.training.commands`, `data_pipeline.commands`, ...) is CLI-level: it sits in the
top layer, whatever package it lives in, and nothing below the top may import it.

`data_pipeline` sits above `vlalign.models` (vlalign's training, evaluation, tracking and
orchestration read shards through it) and may import from vlalign only DATA_PIPELINE_MAY_IMPORT:
the torch-free low layers and `vlalign.models.inputs` (chat encoding).
"""

from __future__ import annotations

COMMANDS = "*.commands"  # every `<package>.commands` module: CLI-level, the top layer

# Bottom to top. Names that do not exist (yet) are allowed: a layer reserves them. A name holds
# its submodules, except "vlalign" itself, which is only the package's __init__.
LAYERS: tuple[tuple[str, ...], ...] = (
    # torch-free names and helpers every layer may use
    (
        "vlalign",
        "vlalign.errors",
        "vlalign.types",
        "vlalign.catalog",
        "vlalign.cache",
        "vlalign.layers",
        "vlalign._shipped",
        "vlalign.scorecard",
        "vlalign.regression_keys",
    ),
    ("vlalign.config", "vlalign.gates"),  # recipe schema, loading, checks; gates over metrics
    ("vlalign.models",),  # builders, LoRA, tiny built-ins, families, unwrap, generation
    ("data_pipeline",),  # shards, readers, converters, transforms, collation
    ("vlalign.logprobs", "vlalign.losses"),  # pure tensor math
    ("vlalign.safety",),  # refusal and validity judgements of text
    ("vlalign.rollout",),  # generation engines, weight sync, rewards (online RL methods use them)
    ("vlalign.methods",),  # one Method per file
    ("vlalign.training",),  # the loop, engine, checkpoints, export
    ("vlalign.evaluation",),  # safety evaluation -> scorecard (no MLflow import)
    ("vlalign.tracking",),  # MLflow: run logging, registry, gates, promotion, publish
    ("vlalign.orchestration",),  # Ray: TorchTrainer shell, Ray Data, job submission
    ("vlalign.pipeline", "vlalign.demo", "vlalign.quiet", "vlalign.cli", COMMANDS),  # CLI-level
)

# What data_pipeline may import from vlalign (a module or a package prefix).
DATA_PIPELINE_MAY_IMPORT: tuple[str, ...] = (
    "vlalign",
    "vlalign.errors",
    "vlalign.types",
    "vlalign.catalog",
    "vlalign.config",
    "vlalign.models.inputs",
)

# Third-party packages a layer must not import (the whole package, at any depth).
FORBIDDEN_IMPORTS: dict[str, tuple[str, ...]] = {
    "vlalign.evaluation": ("mlflow",),
}


def _within(module: str, prefix: str) -> bool:
    if prefix == "vlalign":  # the package root holds only itself, not every vlalign module
        return module == prefix
    return module == prefix or module.startswith(prefix + ".")


def is_commands(module: str) -> bool:
    """True for a CLI-level commands module (`<package>.commands`)."""
    return module.rsplit(".", 1)[-1] == "commands"


def layer_of(module: str) -> int | None:
    """Index in LAYERS of a vlalign or data_pipeline module (None: not one of ours)."""
    if is_commands(module):
        return len(LAYERS) - 1
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for i, names in enumerate(LAYERS):
        for name in names:
            if name != COMMANDS and _within(module, name) and (best is None or len(name) > best[0]):
                best = (len(name), i)
    return None if best is None else best[1]


def data_pipeline_may_import(module: str) -> bool:
    """True when a data_pipeline module may import the vlalign module `module`."""
    return any(_within(module, p) for p in DATA_PIPELINE_MAY_IMPORT)
