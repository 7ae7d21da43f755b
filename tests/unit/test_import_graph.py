"""The import graph of vlalign and data_pipeline: no cycles, no upward imports between layers.

Every module of `platform/vlalign` and `data_pipeline` is parsed with `ast` (nothing is
imported); every static import counts, those inside functions and `if TYPE_CHECKING:` blocks
included. The layers are `vlalign.layers.LAYERS` (torch-free; read here, not copied).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vlalign import layers

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ((ROOT / "platform", "vlalign"), (ROOT, "data_pipeline"))
OURS = ("vlalign", "data_pipeline")


@dataclass(frozen=True)
class Import:
    """One static import: who, of what (a module of ours or a third-party package), where."""

    source: str
    target: str
    line: int


def module_files(sources=SOURCES) -> dict[str, Path]:
    """{dotted module name: file} of every module under the given (root, package) pairs."""
    out = {}
    for root, package in sources:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: set[str]) -> Iterator[Import]:
    """Static imports of one module: `from pkg import mod` names the submodule when it is one."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield Import(module, sub if sub in known else base, node.lineno)


def import_graph(sources=SOURCES) -> tuple[dict[str, Path], list[Import]]:
    files = module_files(sources)
    known = set(files)
    edges = [
        imp
        for mod, path in files.items()
        for imp in imports_of(mod, path, known)
        if imp.target != imp.source
    ]
    return files, edges


def _ours(name: str) -> bool:
    return name.split(".")[0] in OURS


def cycles(nodes: set[str], edges: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    succ: dict[str, set[str]] = {n: set() for n in nodes}
    for e in edges:
        if e.source in succ and e.target in succ:
            succ[e.source].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth: at most the number of modules (~150)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(succ):
        if v not in index:
            visit(v)
    return found


def describe_cycle(comp: list[str], edges: list[Import]) -> str:
    """The component's internal imports, `a:LINE -> b`, for the failure message."""
    inside = set(comp)
    lines = sorted(
        {f"{e.source}:{e.line} -> {e.target}" for e in edges if {e.source, e.target} <= inside}
    )
    return "cycle between " + ", ".join(comp) + "\n    " + "\n    ".join(lines)


def layer_violations(files: dict[str, Path], edges: list[Import]) -> list[str]:
    """Upward imports, unplaced modules, data_pipeline's reach into vlalign, forbidden packages."""
    problems = [
        f"{m}: in no layer of vlalign.layers.LAYERS"
        for m in sorted(files)
        if layers.layer_of(m) is None
    ]
    for e in edges:
        src, dst = layers.layer_of(e.source), layers.layer_of(e.target)
        where = f"{e.source}:{e.line} imports {e.target}"
        for prefix, banned in layers.FORBIDDEN_IMPORTS.items():
            top = e.target.split(".")[0]
            if (e.source == prefix or e.source.startswith(prefix + ".")) and top in banned:
                problems.append(f"{where}: {prefix} must not import {top}")
        if not _ours(e.target) or src is None:
            continue
        if dst is None:
            problems.append(f"{where}: {e.target} is in no layer")
        elif dst > src:
            problems.append(
                f"{where}: upward (layer {src} {layers.LAYERS[src]} -> layer {dst} "
                f"{layers.LAYERS[dst]})"
            )
        if (
            e.source.split(".")[0] == "data_pipeline"
            and not layers.is_commands(e.source)
            and e.target.split(".")[0] == "vlalign"
            and not layers.data_pipeline_may_import(e.target)
        ):
            problems.append(
                f"{where}: data_pipeline may import from vlalign only "
                f"{', '.join(layers.DATA_PIPELINE_MAY_IMPORT)}"
            )
    return list(dict.fromkeys(problems))  # `from m import a, b`: one problem, not two


# -- the checks on the real code ----------------------------------------------------------------


def test_every_module_is_parsed():
    files, edges = import_graph()
    assert "vlalign.training.loop" in files and "data_pipeline.reader" in files
    assert "vlalign" in files and "data_pipeline" in files  # the packages' __init__ modules
    # imports inside functions count: `vlalign run` imports the launcher only when it runs
    assert any(
        e.source == "vlalign.training.commands" and e.target == "vlalign.training.launch"
        for e in edges
    )


def test_no_import_cycles():
    files, edges = import_graph()
    found = cycles(set(files), edges)
    assert not found, "\n".join(describe_cycle(c, edges) for c in found)


def test_no_upward_imports():
    files, edges = import_graph()
    problems = layer_violations(files, edges)
    assert not problems, "\n".join(problems)


# -- the checker itself finds what it must -------------------------------------------------------


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_checker_finds_cycles_upward_imports_and_data_pipeline_reach(tmp_path):
    """A made-up tree: evaluation <-> tracking (one lazy import), config -> training (upward),
    data_pipeline -> vlalign.models.builder (outside its allowance), evaluation -> mlflow."""
    _write(tmp_path, "platform/vlalign/__init__.py", "")
    _write(tmp_path, "platform/vlalign/errors.py", "")
    _write(tmp_path, "platform/vlalign/config/__init__.py", "from . import schema\n")
    _write(tmp_path, "platform/vlalign/config/schema.py", "from vlalign.training import loop\n")
    _write(tmp_path, "platform/vlalign/training/__init__.py", "")
    _write(tmp_path, "platform/vlalign/training/loop.py", "from vlalign.errors import X\n")
    _write(tmp_path, "platform/vlalign/training/commands.py", "import vlalign.cli\n")
    _write(tmp_path, "platform/vlalign/models/builder.py", "")
    _write(
        tmp_path,
        "platform/vlalign/evaluation/runner.py",
        "def f():\n    import mlflow\n    from vlalign.tracking.store import s\n",
    )
    _write(
        tmp_path, "platform/vlalign/tracking/store.py", "from vlalign.evaluation import runner\n"
    )
    _write(tmp_path, "platform/vlalign/mystery.py", "")
    _write(tmp_path, "data_pipeline/__init__.py", "")
    _write(tmp_path, "data_pipeline/stats.py", "from vlalign.models.builder import build\n")
    _write(tmp_path, "data_pipeline/reader.py", "from vlalign.models.inputs import ChatEncoder\n")
    _write(tmp_path, "data_pipeline/commands.py", "from vlalign.models.builder import build\n")
    sources = ((tmp_path / "platform", "vlalign"), (tmp_path, "data_pipeline"))
    files, edges = import_graph(sources)

    assert cycles(set(files), edges) == [["vlalign.evaluation.runner", "vlalign.tracking.store"]]
    problems = "\n".join(layer_violations(files, edges))
    assert "vlalign.config.schema:1 imports vlalign.training.loop: upward" in problems
    assert "vlalign.evaluation.runner:3 imports vlalign.tracking.store: upward" in problems
    assert "vlalign.evaluation.runner:2 imports mlflow: vlalign.evaluation must not" in problems
    assert "data_pipeline.stats:1 imports vlalign.models.builder: data_pipeline may" in problems
    assert "vlalign.mystery: in no layer" in problems
    # allowed: downward, models.inputs from data_pipeline, and anything from a commands module
    assert "tracking.store:1 imports vlalign.evaluation.runner" not in problems
    assert "data_pipeline.reader" not in problems
    assert "commands" not in problems
    assert "vlalign.training.loop" not in problems.replace("imports vlalign.training.loop", "")


def test_commands_modules_are_top_level():
    top = len(layers.LAYERS) - 1
    assert layers.layer_of("vlalign.training.commands") == top
    assert layers.layer_of("data_pipeline.commands") == top
    assert layers.layer_of("vlalign.cli") == top
    assert layers.layer_of("vlalign.catalog") == 0  # reserved before it exists
    assert layers.layer_of("vlalign.models.inputs") < layers.layer_of("data_pipeline.reader")
    assert layers.layer_of("vlalign.evaluation.x") < layers.layer_of("vlalign.tracking.x")
    assert layers.layer_of("vlalign.unknown_module") is None
