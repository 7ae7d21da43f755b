"""The bad-input corpus: each case runs the `vlalign` command in a fresh process from a clean
working directory and expects a one-line error naming the culprit with exit code 2 (or, where
the input is acceptable, a counted skip / a plain success), never a traceback or a hang.

The list of cases and their outcomes is kept in tests/e2e/BAD_INPUT_CASES.md (same ids).
Every case here is a check before training starts (recipes, data, services); lost work
(resume, restart, corrupt checkpoints) is in test_lost_work.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VLALIGN = str(Path(sys.executable).parent / "vlalign")
TIMEOUT_S = 60  # no case may hang: the slowest (a closed Ray port) answers in seconds


def run_vlalign(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = TIMEOUT_S
) -> subprocess.CompletedProcess:
    """`vlalign ARGS` in a fresh process from `cwd`, this checkout first on the path."""
    full_env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RAY_USAGE_STATS_ENABLED": "0",
        **(env or {}),
    }
    return subprocess.run(
        [VLALIGN, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def assert_clear_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, no traceback, one `error:` line that names every needle."""
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert lines, err[-2000:]
    text = err[err.index("error:") :]
    for n in needles:
        assert n in text, (n, text)
    return text


# --- building blocks of the cases -------------------------------------------------------------


def _recipe(d: Path, body: dict | str, name: str = "recipe.yaml") -> str:
    import yaml

    p = d / name
    p.write_text(body if isinstance(body, str) else yaml.safe_dump(body))
    return str(p)


BOMB = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "name: bomb",
    ]
)


def _big_recipe(d: Path) -> list[str]:
    p = d / "big.yaml"
    with open(p, "w") as f:
        f.write("name: big\ndescription: '")
        f.write("a" * (50 * 1000 * 1000))
        f.write("'\n")
    return ["validate", str(p)]


def _custom_code_model(d: Path) -> list[str]:
    m = d / "custom-model"
    m.mkdir()
    (m / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llava",
                "auto_map": {"AutoModelForImageTextToText": "modeling_evil.EvilModel"},
            }
        )
    )
    return ["validate", "tiny/sft", f"model.name={m}"]


def _synth(d: Path, name: str = "shards", pairs: int = 6) -> Path:
    from data_pipeline.synth import synthesize

    out = d / name
    synthesize(out, pairs=pairs, seed=0, eval_pairs=2, shard_samples=4)
    return out


def _tamper_record(d: Path, change: Callable[[dict], None]) -> tuple[Path, str]:
    """A shard set whose first train record is changed by `change` (manifest refreshed)."""
    from data_support import first_key, members, refresh_manifest, replace_member

    from data_pipeline.manifest import load_manifest

    out = _synth(d)
    shard = out / load_manifest(out).splits["train"].shards[0].name
    key = first_key(shard)
    rec = json.loads(dict(members(shard))[f"{key}.json"])
    change(rec)
    replace_member(shard, f"{key}.json", json.dumps(rec).encode())
    refresh_manifest(out)
    return out, key


def _chosen_equals_rejected(d: Path) -> list[str]:
    out, _ = _tamper_record(d, lambda r: r.update(rejected=r["chosen"]))
    return ["data", "validate", str(out), "--quiet"]


def _empty_prompt(d: Path) -> list[str]:
    out, _ = _tamper_record(d, lambda r: r.update(prompt="   "))
    return ["data", "validate", str(out), "--quiet"]


def _member_named(d: Path, prefix: str) -> list[str]:
    """A shard whose first sample's members are renamed to `prefix` + key (e.g. '../')."""
    from data_support import first_key, members, refresh_manifest, write_members

    from data_pipeline.manifest import load_manifest

    out = _synth(d)
    shard = out / load_manifest(out).splits["train"].shards[0].name
    key = first_key(shard)
    items = [
        (f"{prefix}{n}" if n.split(".", 1)[0] == key else n, data) for n, data in members(shard)
    ]
    write_members(shard, items)
    refresh_manifest(out)
    return ["data", "validate", str(out), "--quiet"]


def _tampered_bytes(d: Path) -> list[str]:
    from data_pipeline.manifest import load_manifest

    out = _synth(d)
    shard = out / load_manifest(out).splits["train"].shards[0].name
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    return ["data", "validate", str(out), "--quiet"]


def _png(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 10, 10)).save(path, format="PNG")


def _jsonl(d: Path, rows: list[dict], name: str = "rows.jsonl") -> Path:
    _png(d / "a.png")
    src = d / name
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


GOOD = {"image": "a.png", "prompt": "what is this?", "chosen": "a shape", "rejected": "no"}


def _listen() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, s.getsockname()[1]


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --- the table ---------------------------------------------------------------------------------


@dataclass
class Case:
    """One bad input: how to make it (returns the vlalign arguments), what must come out."""

    id: str
    make: Callable[[Path], list[str]]
    needles: tuple[str, ...] = ()
    rc: int = 2
    stdout: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    max_s: float | None = None  # must answer within this (a hang is a failure)
    after: Callable[[Path, subprocess.CompletedProcess], None] | None = None


def _no_mlruns(d: Path, proc) -> None:
    assert not (d / "mlruns").exists(), "refused too late: the MLflow store was created"


def _convert_left_nothing(d: Path, proc) -> None:
    assert not (d / "conv").exists(), "a failed convert left an output directory behind"


def _old_split_survives(d: Path, proc) -> None:
    from data_pipeline.validate import validate

    report = validate(str(d / "set"))
    assert report.ok and report.samples == 2, [str(p) for p in report.problems]
    assert json.loads((d / "digest.json").read_text()) == report.digest


def _prepare_set(d: Path) -> None:
    """`set`: a one-split shard set converted from two good rows (its digest kept aside)."""
    from data_pipeline.converters import convert

    src = _jsonl(d, [GOOD, {**GOOD, "prompt": "and this?"}], "old.jsonl")
    r = convert("jsonl", src, d / "set")
    (d / "digest.json").write_text(json.dumps(r["dataset_digest"]))


def _overwrite_fails_half_way(d: Path) -> list[str]:
    _prepare_set(d)
    rows = [{**GOOD, "prompt": f"row {i}"} for i in range(5)] + [{"image": "a.png"}]
    src = _jsonl(d, rows, "new.jsonl")
    return [
        "data",
        "convert",
        "--format",
        "jsonl",
        str(src),
        str(d / "set"),
        "--overwrite",
        "--shard-samples",
        "2",
        "--quiet",
    ]


def _overwrite_ok(d: Path) -> list[str]:
    _prepare_set(d)
    src = _jsonl(d, [{**GOOD, "prompt": f"row {i}"} for i in range(3)], "new.jsonl")
    return [
        "data",
        "convert",
        "--format",
        "jsonl",
        str(src),
        str(d / "set"),
        "--overwrite",
        "--quiet",
    ]


def _replaced(d: Path, proc) -> None:
    from data_pipeline.manifest import load_manifest
    from data_pipeline.validate import validate

    report = validate(str(d / "set"))
    assert report.ok and report.samples == 3
    listed = {s.name for sp in load_manifest(d / "set").splits.values() for s in sp.shards}
    assert {p.name for p in (d / "set").glob("*.tar")} == listed  # old shards deleted


def _ui_port_in_use(d: Path) -> list[str]:
    s, port = _listen()
    d.joinpath(".held").write_text(str(port))
    _HELD.append(s)
    return ["ui", "--port", str(port)]


_HELD: list[socket.socket] = []


CASES = [
    # recipes
    Case("recipe-alias-bomb", lambda d: ["validate", _recipe(d, BOMB)], ("alias bomb",), max_s=20),
    Case("recipe-50mb", _big_recipe, ("larger than a recipe may be",), max_s=20),
    Case(
        "recipe-override-bad-type",
        lambda d: ["validate", "tiny/sft", "train.max_steps=abc"],
        ("command-line override", "'train.max_steps=abc'"),
    ),
    Case(
        "recipe-override-unknown-key",
        lambda d: ["validate", "tiny/sft", "train.lrr=1e-4"],
        ("train.lrr: unknown key", "did you mean 'train.lr'", "'train.lrr=1e-4'"),
    ),
    Case(
        "recipe-override-no-equals",
        lambda d: ["validate", "tiny/sft", "train.lr"],
        ("override 'train.lr': expected key.path=value",),
    ),
    Case(
        "recipe-override-bad-check",
        lambda d: ["validate", "tiny/sft", f"data.train={d}/nowhere"],
        ("data.train: shard directory", "command-line override"),
    ),
    Case(
        "recipe-hub-id-offline",
        lambda d: ["validate", "tiny/sft", "model.name=nobody/no-such-model"],
        ("'nobody/no-such-model'", "HF_HUB_OFFLINE"),
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"},
        max_s=30,
    ),
    Case(
        "recipe-hub-id-no-network",
        lambda d: ["validate", "tiny/sft", "model.name=nobody/no-such-model"],
        ("'nobody/no-such-model'", "cannot be reached"),
        env={"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "HF_HOME": "/nonexistent-hf"},
        max_s=30,
    ),
    Case(
        "recipe-hub-id-elsewhere",
        lambda d: ["validate", "tiny/sft", "model.name=nobody/no-such-model", "--elsewhere"],
        rc=0,
        stdout=("ok: tiny/sft",),
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"},
    ),
    Case(
        "recipe-custom-code-untrusted",
        _custom_code_model,
        ("needs custom code", "modeling_evil.EvilModel", "trust_remote_code is false"),
    ),
    Case(
        "recipe-model-path-is-file",
        lambda d: ["validate", "tiny/sft", f"model.name={_recipe(d, 'x: 1', 'weights.bin')}"],
        ("is a file, not a model directory",),
    ),
    Case(
        "recipe-global-batch-impossible",
        lambda d: [
            "validate",
            "tiny/sft",
            "resources.num_workers=2",
            "engine.overrides.train_batch_size=10",
        ],
        ("train_batch_size: 10 cannot be made", "num_workers 2 = 32"),
    ),
    Case(
        "recipe-ds-accum-disagrees",
        lambda d: ["validate", "tiny/sft", "engine.overrides.gradient_accumulation_steps=3"],
        ("disagree with train.micro_batch_size",),
    ),
    Case(
        "recipe-ds-batch-not-int",
        lambda d: ["validate", "tiny/sft", "engine.overrides.train_batch_size=lots"],
        ("must be a positive integer",),
    ),
    Case(
        "recipe-missing-file",
        lambda d: ["validate", str(d / "nope.yaml")],
        ("no such recipe file",),
    ),
    Case(
        "recipe-is-directory",
        lambda d: ["validate", str(d)],
        ("no such recipe file",),
    ),
    Case(
        "recipe-top-level-list",
        lambda d: ["validate", _recipe(d, "- a\n- b\n")],
        ("top level must be a mapping",),
    ),
    Case(
        "recipe-bad-yaml",
        lambda d: ["validate", _recipe(d, "train: {max_steps: 3\n")],
        ("not valid YAML",),
    ),
    Case(
        "recipe-not-utf8",
        lambda d: (
            (d / "latin.yaml").write_bytes(b"name: caf\xe9\n")
            and ["validate", str(d / "latin.yaml")]
        ),
        ("not UTF-8",),
    ),
    Case(
        "recipe-extends-cycle",
        lambda d: (
            (
                _recipe(d, "extends: b.yaml\n", "a.yaml"),
                _recipe(d, "extends: a.yaml\n", "b.yaml"),
            )
            and ["validate", str(d / "a.yaml")]
        ),
        ("extends: cycle",),
    ),
    Case(
        "recipe-extends-missing",
        lambda d: ["validate", _recipe(d, "extends: no/such-base\n")],
        ("extends: 'no/such-base'",),
    ),
    Case(
        "recipe-unknown-key-in-file",
        lambda d: ["validate", _recipe(d, {"extends": "tiny/sft", "train": {"lrr": 1}})],
        ("recipe.yaml", "train.lrr: unknown key"),
    ),
    Case(
        "recipe-shards-without-manifest",
        lambda d: (d / "raw").mkdir() or ["validate", "tiny/sft", f"data.train={d / 'raw'}"],
        ("has no manifest.json",),
    ),
    Case(
        "recipe-template-missing",
        lambda d: ["validate", "tiny/sft", "engine.template=/no/such/zero9.json"],
        ("engine.template", "does not exist"),
    ),
    Case(
        "recipe-auto-promotion-without-model",
        lambda d: ["validate", "tiny/sft", "promotion.auto=true"],
        ("promotion.auto: needs tracking.registered_model",),
    ),
    # services
    Case(
        "run-address-closed-port",
        lambda d: ["run", "tiny/sft", "--address", f"127.0.0.1:{_closed_port()}"],
        ("cannot reach the Ray cluster", "Connection refused"),
        max_s=30,
        after=_no_mlruns,
    ),
    Case(
        "run-address-unknown-host",
        lambda d: ["run", "tiny/sft", "--address", "no-such-host.invalid:6379"],
        ("cannot reach the Ray cluster at no-such-host.invalid:6379",),
        max_s=30,
        after=_no_mlruns,
    ),
    Case(
        "run-hub-model-unreachable",
        lambda d: ["run", "tiny/sft", "--no-ray", "model.name=nobody/no-such-model"],
        ("'nobody/no-such-model'",),
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"},
        max_s=30,
        after=_no_mlruns,
    ),
    Case("ui-port-in-use", _ui_port_in_use, ("cannot listen on 127.0.0.1", "--port"), max_s=30),
    Case("ui-port-out-of-range", lambda d: ["ui", "--port", "70000"], ("not a TCP port",)),
    # data
    Case(
        "data-chosen-equals-rejected",
        _chosen_equals_rejected,
        stdout=("BAD train/", "chosen equals rejected", "1 problem(s)"),
    ),
    Case("data-empty-prompt", _empty_prompt, stdout=("BAD train/", "prompt is empty")),
    Case(
        "data-tar-member-dotdot",
        lambda d: _member_named(d, "../"),
        stdout=("BAD train/", "points outside the shard directory"),
    ),
    Case(
        "data-tar-member-absolute",
        lambda d: _member_named(d, "/tmp/"),
        stdout=("BAD train/", "points outside the shard directory"),
    ),
    Case(
        "data-shard-bytes-changed",
        _tampered_bytes,
        stdout=("BAD train/train-000000.tar", "problem(s)"),
    ),
    Case(
        "data-validate-clean-set",
        lambda d: ["data", "validate", str(_synth(d)), "--quiet"],
        rc=0,
        stdout=("ok:",),
    ),
    Case(
        "data-validate-missing-dir",
        lambda d: ["data", "validate", str(d / "none")],
        ("no manifest.json",),
    ),
    Case(
        "data-convert-all-rows-bad",
        lambda d: [
            "data",
            "convert",
            "--format",
            "jsonl",
            str(_jsonl(d, [{**GOOD, "rejected": GOOD["chosen"]}])),
            str(d / "conv"),
            "--quiet",
        ],
        ("rows.jsonl line 1", "chosen equals rejected"),
        after=_convert_left_nothing,
    ),
    Case(
        "data-convert-skip-counts",
        lambda d: [
            "data",
            "convert",
            "--format",
            "jsonl",
            str(_jsonl(d, [GOOD, {**GOOD, "prompt": ""}, {**GOOD, "rejected": "a shape"}])),
            str(d / "conv"),
            "--on-error",
            "skip",
            "--quiet",
        ],
        rc=0,
        stdout=("1 samples, 2 skipped", "prompt is empty", "chosen equals rejected"),
    ),
    Case(
        "data-convert-overwrite-fails-half-way",
        _overwrite_fails_half_way,
        ("new.jsonl line 6",),
        after=_old_split_survives,
    ),
    Case(
        "data-convert-overwrite-ok",
        _overwrite_ok,
        rc=0,
        stdout=("3 samples, 0 skipped",),
        after=_replaced,
    ),
    Case(
        "data-convert-missing-src",
        lambda d: ["data", "convert", "--format", "jsonl", str(d / "no.jsonl"), str(d / "conv")],
        ("no.jsonl: no such file or directory",),
        after=_convert_left_nothing,
    ),
    Case(
        "data-convert-split-exists",
        lambda d: (
            _prepare_set(d)
            or ["data", "convert", "--format", "jsonl", str(_jsonl(d, [GOOD])), str(d / "set")]
        ),
        ("split 'train' exists",),
    ),
    Case(
        "data-synth-not-empty",
        lambda d: (
            (d / "out").mkdir()
            or (
                (d / "out" / "x").write_text("x")
                and ["data", "synth", str(d / "out"), "--pairs", "4"]
            )
        ),
        ("is not empty (use --overwrite",),
    ),
    Case(
        "data-synth-too-few-pairs",
        lambda d: ["data", "synth", str(d / "out"), "--pairs", "1"],
        ("--pairs must be at least 2",),
    ),
    Case(
        "data-stats-missing-dir",
        lambda d: ["data", "stats", str(d / "none")],
        ("no manifest.json",),
    ),
]


@pytest.fixture(autouse=True)
def _release_sockets():
    yield
    while _HELD:
        _HELD.pop().close()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    args = case.make(work)
    t0 = time.monotonic()
    proc = run_vlalign(args, work, case.env)
    took = time.monotonic() - t0
    if case.needles:
        assert_clear_error(proc, *case.needles)
    else:
        assert proc.returncode == case.rc, (proc.stdout[-2000:], proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
    for s in case.stdout:
        assert s in proc.stdout, (s, proc.stdout[-2000:])
    if case.max_s is not None:
        assert took < case.max_s, f"{case.id} took {took:.1f} s"
    if case.after is not None:
        case.after(work, proc)


def test_corpus_is_documented() -> None:
    """Every case id appears in BAD_INPUT_CASES.md (the list the closing note quotes)."""
    doc = (Path(__file__).parent / "BAD_INPUT_CASES.md").read_text()
    missing = [c.id for c in CASES if f"`{c.id}`" not in doc]
    assert not missing, missing
