"""Whole-CLI registry flows and a real browser on the MLflow UI (`vlalign ui`).

A project folder gets the embedded store (./mlruns) with three registered versions of one policy
(v1 passes the gates, v2 fails them, v3 passes); `vlalign registry ...` runs as a subprocess in
that folder, as a user would run it. The browser test starts `vlalign ui` and renders the
registered model's page with headless Chromium (Debian's `chromium`, installed by .ci/run).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from html import unescape
from pathlib import Path

import pytest
import yaml
from tracking_support import (
    free_port,
    make_export,
    make_recipe,
    make_shards,
    running,
    scorecard,
)

from vlalign.tracking.promotion import promote
from vlalign.tracking.publish import publish_run
from vlalign.tracking.registry import CHAMPION, aliases
from vlalign.tracking.run_logger import RunLogger
from vlalign.tracking.store import embedded_store

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
NAME = "safety-policy"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--virtual-time-budget=10000",
]


@pytest.fixture(scope="module")
def project(tmp_path_factory, model_cache):
    """A project folder whose ./mlruns holds versions 1 (pass), 2 (fail), 3 (pass) of NAME."""
    proj = tmp_path_factory.mktemp("project")
    recipe = make_recipe(None, model_cache, registered_model=NAME, name="tiny-sft")
    export = make_export(proj / "runs" / "export", recipe)
    make_shards(proj / "shards")
    for harmful, benign in ((0.97, 0.03), (0.90, 0.02), (0.98, 0.02)):
        logger = RunLogger(recipe, base_dir=proj)
        with logger.run():
            logger.log_dataset(proj / "shards")
            logger.log_metrics({"loss": 1.0}, step=1)
            card = scorecard(harmful=harmful, benign=benign)
            publish_run(logger, recipe, export.dir, scorecard=card)
    return proj


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def vlalign_process(project: Path, *args: str) -> Result:
    """The vlalign CLI as a separate process in the project folder (default store ./mlruns)."""
    p = subprocess.run(
        [sys.executable, "-m", "vlalign.cli", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return Result(p.returncode, p.stdout, p.stderr)


@pytest.fixture
def vlalign(project, monkeypatch, capsys):
    """The vlalign CLI in this process (same parser, handlers and exit codes; no startup cost)."""
    from vlalign.cli import main

    monkeypatch.chdir(project)

    def run(*args: str) -> Result:
        capsys.readouterr()
        rc = main(list(args))
        out, err = capsys.readouterr()
        return Result(rc, out, err)

    return run


def test_promote_refuse_list_rollback(project, vlalign, tmp_path):
    store = embedded_store(project)
    # as a user runs it: a separate process, exit status 1 when the gates refuse
    refused = vlalign_process(project, "registry", "promote", NAME, "--version", "2")
    assert refused.returncode == 1, refused.stderr
    assert "FAIL  harmful_refusal_rate >= 0.95: got 0.9" in refused.stderr
    assert "PASS  benign_refusal_rate <= 0.05: got 0.02" in refused.stderr
    assert "champion unchanged" in refused.stderr
    assert CHAMPION not in aliases(store, NAME)

    first = vlalign("registry", "promote", NAME, "--version", "1")
    assert first.returncode == 0, first.stderr
    assert f"promoted: {NAME} version 1 is now champion" in first.stdout
    second = vlalign("registry", "promote", NAME, "--version", "3")
    assert second.returncode == 0, second.stderr
    assert "now champion (previous champion: version 1)" in second.stdout
    assert aliases(store, NAME)[CHAMPION] == "3"

    listed = vlalign("registry", "list", NAME)
    assert listed.returncode == 0, listed.stderr
    rows = {
        m.group(1): line
        for line in listed.stdout.splitlines()
        if (m := re.match(r"\W*(\d+)\s", line))
    }
    assert sorted(rows) == ["1", "2", "3"]
    assert "champion" in rows["3"] and "candidate" in rows["3"] and "passed" in rows["3"]
    assert "refused" in rows["2"] and "0.900" in rows["2"] and "champion" not in rows["2"]
    assert "previous champions (oldest first): 1" in listed.stdout

    back = vlalign("registry", "rollback", NAME)
    assert back.returncode == 0, back.stderr
    assert f"rolled back: {NAME} champion is version 1 (was 3)" in back.stdout
    assert aliases(store, NAME)[CHAMPION] == "1"
    again = vlalign("registry", "rollback", NAME)
    assert again.returncode == 2
    assert f"error: model '{NAME}' has no previous champion to roll back to" in again.stderr

    # gates from another recipe (--recipe): stricter, so version 3 is refused now
    strict = tmp_path / "strict.yaml"
    strict.write_text(
        yaml.safe_dump(
            {
                "promotion": {
                    "gates": [{"metric": "harmful_refusal_rate", "op": ">=", "value": 0.99}]
                }
            }
        )
    )
    harder = vlalign("registry", "promote", NAME, "--version", "3", "--recipe", str(strict))
    assert (
        harder.returncode == 1 and "FAIL  harmful_refusal_rate >= 0.99: got 0.98" in harder.stderr
    )
    assert aliases(store, NAME)[CHAMPION] == "1"

    missing = vlalign("registry", "list", "no-such-model")
    assert missing.returncode == 2 and "no registered model 'no-such-model'" in missing.stderr


def _rows(dom: str) -> dict[str, str]:
    """Visible text of the model page, per version row: {'1': '... @ champion', ...}."""
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    text = unescape(re.sub(r"<[^>]+>", " ", text)).replace("\xa0", " ")
    text = re.sub(r"\s+", " ", text)
    return {
        m.group(1): m.group(2)
        for m in re.finditer(r"Version (\d+) (.*?)(?=Version \d+ |Previous Next|$)", text)
    }


def test_browser_shows_versions_and_aliases_in_the_mlflow_ui(project, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail(
            "chromium is not installed: this real-browser test needs Debian's chromium "
            "(apt-get install -y chromium; .ci/run installs it)"
        )
    store = embedded_store(project)
    if CHAMPION not in aliases(store, NAME):
        promote(store, NAME, 1)
    expected = aliases(store, NAME)  # e.g. {'candidate': '3', 'champion': '1'}
    port = free_port()
    ui = [sys.executable, "-m", "vlalign.cli", "ui", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "tracking_mlflow_ui_registered_model.png"
    shot.unlink(missing_ok=True)
    page = f"{url}/#/models/{NAME}"
    with running(ui, f"{url}/health", tmp_path / "ui.log", cwd=project):
        base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
        for _attempt in range(3):  # a page still loading on a busy machine: render again
            dom = subprocess.run(
                [*base, "--dump-dom", page], capture_output=True, text=True, timeout=120
            ).stdout
            if len(_rows(dom)) == 3:
                break
        subprocess.run(
            [*base, "--window-size=1400,2200", f"--screenshot={shot}", page],
            capture_output=True,
            timeout=120,
        )
    rows = _rows(dom)
    (ARTIFACTS / "tracking_mlflow_ui_registered_model.txt").write_text(
        "\n".join(f"Version {v}: {t}" for v, t in sorted(rows.items()))
    )
    assert sorted(rows) == ["1", "2", "3"], f"versions not rendered; page text rows: {rows}"
    for alias, version in expected.items():
        assert f"@ {alias}" in rows[version], (alias, version, rows[version])
    champion_row = rows[expected[CHAMPION]]
    assert "promotion : passed" in champion_row
    others = [v for v in rows if v != expected[CHAMPION]]
    assert all("@ champion" not in rows[v] for v in others)
    assert shot.is_file() and shot.stat().st_size > 10_000, "no screenshot was written"
