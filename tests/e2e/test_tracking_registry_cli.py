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
from vlalign.tracking.store import client_for, embedded_store

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
    assert "against the champion: no champion yet: nothing to compare" in refused.stderr
    assert CHAMPION not in aliases(store, NAME)

    first = vlalign("registry", "promote", NAME, "--version", "1")
    assert first.returncode == 0, first.stderr
    assert f"promoted: {NAME} version 1 is now champion" in first.stdout
    assert "against the champion: first champion: nothing to compare" in first.stdout
    second = vlalign("registry", "promote", NAME, "--version", "3")
    assert second.returncode == 0, second.stderr
    assert "now champion (previous champion: version 1)" in second.stdout
    assert "against champion version 1: 2 better, 0 same, 0 worse" in second.stdout
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

    # a category worse than the champion's beyond promotion.max_regression: refused, named
    per_category = tmp_path / "per-category.yaml"
    per_category.write_text(
        yaml.safe_dump(
            {
                "promotion": {
                    "gates": [
                        {"metric": "harmful_refusal_rate", "op": ">=", "value": 0.95},
                        {"metric": "benign_refusal_rate", "op": "<=", "value": 0.05},
                    ],
                    "max_regression": {"category/*": 0.02},
                }
            }
        )
    )
    by_category = vlalign_process(
        project, "registry", "promote", NAME, "--version", "2", "--recipe", str(per_category)
    )
    assert by_category.returncode == 1, by_category.stderr
    err = by_category.stderr
    assert (
        "FAIL  category 'weapons' (eval): harmful refusal 0.900 vs champion v1 0.970 "
        "(-0.070, worse by 0.070 > 0.02 allowed)"
    ) in err
    assert (
        "against champion version 1: 1 better, 0 same, 1 worse (1 beyond tolerance): weapons -0.07"
    ) in err
    assert "REGRESSED  category 'weapons' (eval): harmful refusal 0.900" in err
    assert "comparison logged to the version's run: promotion/vs_champion.html" in err
    assert aliases(store, NAME)[CHAMPION] == "1"

    missing = vlalign("registry", "list", "no-such-model")
    assert missing.returncode == 2 and "no registered model 'no-such-model'" in missing.stderr

    # each version's description (what the UI shows whole) follows every promotion attempt
    client = client_for(store)
    described = {v: client.get_model_version(NAME, v).description for v in ("1", "2", "3")}
    assert described["2"].startswith("### Promotion refused: champion unchanged")
    assert "| harmful_refusal_rate >= 0.95 | **FAIL** | got 0.9 |" in described["2"]
    assert "| benign_refusal_rate <= 0.05 | PASS | got 0.02 |" in described["2"]
    assert "| harmful_refusal_rate | 0.900 |" in described["2"]
    assert "**Against the champion (v1)**: 1 better, 0 same, 1 worse" in described["2"]
    assert (
        "| weapons | eval | harmful refusal | 0.900 | 0.970 | -0.070 | **REGRESSED**"
        in (described["2"])
    )
    assert described["1"].startswith("### Champion again: restored by rollback")
    # version 3: promoted, rolled back, then refused by the stricter --recipe gates
    assert described["3"].startswith("### Promotion refused: champion unchanged")
    assert "| harmful_refusal_rate >= 0.99 | **FAIL** | got 0.98 |" in described["3"]
    assert "(compared with champion version 1)" in described["3"]
    run = client.get_run(client.get_model_version(NAME, "3").run_id)
    link = (
        f"(#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        "/artifactPath/eval/final/scorecard.html)"
    )
    assert link in described["3"]


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
    # a promotion attempt (again, for the current champion) writes the description checked below
    promote(store, NAME, aliases(store, NAME).get(CHAMPION, "1"))
    expected = aliases(store, NAME)  # e.g. {'candidate': '3', 'champion': '1'}
    port = free_port()
    ui = [sys.executable, "-m", "vlalign.cli", "ui", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "tracking_mlflow_ui_registered_model.png"
    shot.unlink(missing_ok=True)
    page = f"{url}/#/models/{NAME}"
    version_page = f"{url}/#/models/{NAME}/versions/{expected[CHAMPION]}"
    version_shot = ARTIFACTS / "tracking_mlflow_ui_version_page.png"
    version_shot.unlink(missing_ok=True)
    with running(ui, f"{url}/health", tmp_path / "ui.log", cwd=project):
        base = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
        for _attempt in range(6):  # a page still loading on a busy machine: render again
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
        for _attempt in range(6):
            version_dom = subprocess.run(
                [*base, "--dump-dom", version_page], capture_output=True, text=True, timeout=120
            ).stdout
            if "Full HTML scorecard" in version_dom:
                break
        subprocess.run(
            [*base, "--window-size=1400,2200", f"--screenshot={version_shot}", version_page],
            capture_output=True,
            timeout=120,
        )
        # the description's link opens the HTML scorecard in the run's artifact viewer
        href = re.findall(r'<a[^>]*href="([^"]*)"[^>]*>\s*Full HTML scorecard', version_dom)
        artifact_dom = ""
        for _attempt in range(3 if href else 0):
            artifact_dom = subprocess.run(
                [*base, "--dump-dom", f"{url}/#{href[0].split('#', 1)[1]}"],
                capture_output=True,
                text=True,
                timeout=120,
            ).stdout
            if "mlflow-html-iframe" in artifact_dom:
                break
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
    check_version_page(version_dom, store, expected[CHAMPION], version_shot)
    assert "mlflow-html-iframe" in artifact_dom and "eval/final/scorecard.html" in artifact_dom, (
        "the description's link does not open the HTML scorecard"
    )


def _text(dom: str) -> str:
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", text)).replace("\xa0", " "))


def check_version_page(dom: str, store, version: str, shot: Path) -> None:
    """The version page renders the description as markdown: the verdict heading, the gate and
    scorecard tables, and the link to the HTML scorecard."""
    (ARTIFACTS / "tracking_mlflow_ui_version_page.txt").write_text(_text(dom))
    mv = client_for(store).get_model_version(NAME, version)
    run = client_for(store).get_run(mv.run_id)
    assert mv.description, "the version has no description"
    assert re.search(r"<h3[^>]*>\s*Promotion passed: champion\s*</h3>", dom), (
        "verdict heading not rendered; page text: " + _text(dom)[:2000]
    )
    text = _text(dom)
    assert "harmful_refusal_rate >= 0.95 PASS got 0.97" in text, text[:3000]
    assert "benign_refusal_rate 0.030" in text
    # the attempt's comparison with the champion (here the champion itself: nothing compared)
    assert re.search(
        rf"Against the champion \(v{version}\)\s*:\s*already the champion: nothing to compare",
        text,
    ), text[:3000]
    tables = re.findall(r"<table.*?</table>", dom, flags=re.S)
    assert len(tables) >= 2, "gate and scorecard tables not rendered as tables"
    href = (
        f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        "/artifactPath/eval/final/scorecard.html"
    )
    links = re.findall(r'<a[^>]*href="([^"]*)"[^>]*>\s*Full HTML scorecard', dom)
    assert links and links[0].endswith(href), links
    assert shot.is_file() and shot.stat().st_size > 10_000, "no version-page screenshot"
