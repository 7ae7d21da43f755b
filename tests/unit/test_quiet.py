"""vlalign.quiet: the terminal gets what a person reads, the log file gets everything else.

Each case runs in a fresh Python process whose stdout/stderr are a pipe, as `vlalign demo`'s are
when its output is captured: what reaches the pipe is what a person would see.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from vlalign.quiet import follow_steps, read_step, tail

REPO = Path(__file__).resolve().parents[2]


def run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), str(REPO)])}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,
    )


def test_everything_but_the_terminal_stream_goes_to_the_log(tmp_path):
    p = run(
        """
        import subprocess, sys, warnings
        from vlalign.quiet import logs_to_file
        print("before")
        with logs_to_file("out/run.log") as term:
            print("status line", file=term)
            print("python stdout")
            print("python stderr", file=sys.stderr)
            warnings.warn("a library warning")
            subprocess.run(["sh", "-c", "echo child stdout; echo child stderr >&2"])
        print("after")
        """,
        tmp_path,
    )
    assert p.returncode == 0, p.stdout
    assert p.stdout.splitlines() == ["before", "status line", "after"]
    log = (tmp_path / "out" / "run.log").read_text()
    for line in (
        "python stdout",
        "python stderr",
        "a library warning",
        "child stdout",
        "child stderr",
    ):
        assert line in log, (line, log)
    assert "status line" not in log


def test_a_failure_shows_the_log_tail_and_then_the_error(tmp_path):
    p = run(
        """
        import subprocess
        from vlalign.quiet import logs_to_file
        with logs_to_file("run.log") as term:
            print("stage 1", file=term)
            for i in range(100):
                print(f"worker line {i}")
            subprocess.run(["sh", "-c", "echo 'Traceback: worker died' >&2"])
            raise SystemExit("error: the stage failed")
        """,
        tmp_path,
    )
    assert p.returncode == 1
    shown = p.stdout.splitlines()
    assert shown[0] == "stage 1"
    assert f"failed; the last lines of {tmp_path / 'run.log'}:" in shown
    assert "Traceback: worker died" in shown and "worker line 99" in shown
    assert "worker line 10" not in shown  # the tail, not the whole log
    assert shown[-2:] == [f"(full log: {tmp_path / 'run.log'})", "error: the stage failed"]


def test_one_bar_follows_the_steps_rank_0_writes(tmp_path):
    term = io.StringIO()
    progress = tmp_path / "progress.json"
    with follow_steps(progress, 4, "sft", term) as on_step:
        for step in range(1, 5):
            on_step(step, {"loss": 1.0 / step})
    assert read_step(progress) == {"step": 4, "loss": 0.25}
    final = term.getvalue().split("\r")[-1]
    assert final.startswith("sft: 100%") and "4/4" in final and "loss=0.2500" in final
    assert term.getvalue().count("\n") == 1  # one bar, one line once it is done


def test_tail_keeps_the_last_redraw_of_each_line(tmp_path):
    f = tmp_path / "x.log"
    f.write_text("a\nbar 1%\rbar 50%\rbar 100%\nb\n")
    assert tail(f, 2) == "bar 100%\nb"
    assert tail(tmp_path / "missing.log") == ""
