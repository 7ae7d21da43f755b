"""Lost-node drills through the `vlalign run` command (fresh processes) on a real 2-node Ray
cluster on this machine, started the way a platform engineer starts one: two `ray start` calls.

The cluster: a head (`ray start --head --block`, 1 logical CPU) and a worker node (`ray start
--address HEAD --block`, 1 logical CPU), each a process in its own session with a private
`--temp-dir` and token file, so no other Ray cluster on the machine is joined or stopped. Every
node registers as 127.0.0.1 (`--node-ip-address`); `ray start` refuses to add a node to a head
in Ray's local-only mode, so the nodes run in its ordinary multi-node mode (its services listen
on every interface for the test's minute, behind token authentication). Losing a node is a
SIGKILL to every process of that `ray start` (its process group and descendants): raylet,
agents and the workers on it die at once, as when a machine disappears.

- Training workers: `vlalign run tiny/sft --address HEAD` with 2 workers x 1 CPU, so one worker
  runs on each node (the CPU counts force it, as in tests/integration/test_lost_node.py: the
  recipe has no custom-resource field), checkpoints in storage both nodes see
  (`resources.storage_path`, one machine). Once the first checkpoint is in that storage the
  worker node is killed and a replacement node joins; Ray Train restarts the worker group
  (`resources.max_failures=1`) on the head and the replacement from the last checkpoint, the
  command exits 0 and the 12 losses equal those of an uninterrupted `--no-ray --nproc 2` run.
- Rollout actor: `vlalign run tiny/grpo --address HEAD` with `method.rollout.placement=ray`,
  one training worker (the head's CPU) and one rollout actor (1 CPU: the worker node's). The
  worker node is killed after the first step and a replacement joins; Ray restarts the actor
  there (`max_restarts`), the interrupted call is retried with the latest weights, the training
  worker never restarts, and the losses equal an uninterrupted run's.

Cases are listed in BAD_INPUT_CASES.md (`lost-worker-node-cli`, `lost-rollout-node-cli`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
STARTED = "This command will now block forever"  # `ray start --block`: the node is up
RUN_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, cond: Callable[[], bool], timeout: float, proc=None, poll: float = 0.1):
    """Poll `cond` until true; fail naming `what` on timeout or when `proc` exits first."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited first (rc {proc.returncode})")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(poll)


@dataclass
class Node:
    """One Ray node: the `ray start --block` process (a session leader) and its log."""

    name: str
    proc: subprocess.Popen
    log: Path

    def processes(self) -> list[psutil.Process]:
        """Every live process of the node: its session's process group and all descendants."""
        found: dict[int, psutil.Process] = {}
        try:
            root = psutil.Process(self.proc.pid)
            found[root.pid] = root
            found.update({c.pid: c for c in root.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == self.proc.pid:
                    found[p.pid] = p
            except (ProcessLookupError, psutil.Error):
                continue
        return list(found.values())

    def running(self, marker: str) -> list[int]:
        """Pids of the node's Ray workers whose title holds `marker` (e.g. RayTrainWorker)."""
        pids = []
        for p in self.processes():
            try:
                if marker in " ".join(p.cmdline()):
                    pids.append(p.pid)
            except psutil.Error:
                continue
        return pids

    def kill(self) -> int:
        """SIGKILL every process of the node at once (a lost machine); returns how many."""
        procs = self.processes()
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        return len(procs)


class LocalRayCluster:
    """A head and worker nodes started with `ray start --block` (see the module docstring)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="vln-", dir="/tmp"))  # short: Ray socket paths
        token = self.dir / "token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.client_env = {  # what a user's shell has: the token file, nothing else of Ray's
            **base,
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DS_ACCELERATOR": "cpu",
        }
        self.node_env = {
            **self.client_env,
            "RAY_AUTH_MODE": "token",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",  # multi-node mode (module docstring)
        }
        self.nodes: list[Node] = []

    def _start(self, name: str, args: list[str]) -> Node:
        log = self.dir / f"{name}.log"
        cmd = [str(VENV_BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1"]
        cmd += ["--num-cpus", "1", "--temp-dir", str(self.dir / name), "--disable-usage-stats"]
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [*cmd, *args],
                env=self.node_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed as one machine
            )
        node = Node(name, proc, log)
        self.nodes.append(node)
        _wait(f"Ray node {name} ({log})", lambda: STARTED in log.read_text(), 120, proc)
        return node

    def start_head(self) -> Node:
        return self._start(
            "head", ["--head", "--port", str(self.port), "--include-dashboard", "false"]
        )

    def add_node(self, name: str) -> Node:
        return self._start(name, ["--address", self.address])

    def shutdown(self) -> None:
        """SIGTERM each node's `ray start` (it stops its services), then SIGKILL what is left
        (a `ray start` that did not exit in time, and any process that outlived its own)."""
        for node in reversed(self.nodes):
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            for p in node.processes():
                with contextlib.suppress(psutil.Error):
                    p.send_signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.proc.wait(timeout=10)


@pytest.fixture
def cluster():
    """A live head (1 CPU); each test adds its worker nodes. Everything is stopped after."""
    c = LocalRayCluster()
    try:
        c.start_head()
        yield c
    finally:
        c.shutdown()
        shutil.rmtree(c.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from data_pipeline.synth import synthesize

    out = tmp_path_factory.mktemp("lost-node-cli") / "shards"
    synthesize(out, pairs=48, seed=0)
    return out


def _vlalign(args: list[str], cwd: Path, env: dict, timeout: float = RUN_TIMEOUT_S):
    return subprocess.run(
        [str(VENV_BIN / "vlalign"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _start_vlalign(args: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    """`vlalign ARGS` in the background; stdout and stderr go to files in `cwd`."""
    return subprocess.Popen(
        [str(VENV_BIN / "vlalign"), *args],
        cwd=cwd,
        env=env,
        stdout=open(cwd / "stdout.txt", "w"),
        stderr=open(cwd / "stderr.txt", "w"),
    )


def _finish(proc: subprocess.Popen, cwd: Path) -> tuple[str, str]:
    try:
        proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    out, err = (cwd / "stdout.txt").read_text(), (cwd / "stderr.txt").read_text()
    assert proc.returncode == 0, (proc.returncode, out[-3000:], err[-5000:])
    return out, err


def _losses(out_dir: Path, step: int) -> list[float]:
    state = out_dir / "checkpoints" / f"step-{step:06d}" / "trainer_state.json"
    return json.loads(state.read_text())["losses"]


def _clean_dir(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    return d


SFT_STEPS = 12


def _sft_args(shards: Path, out: Path, model_cache: str, storage: Path) -> list[str]:
    return [
        "run", "tiny/sft", "--no-eval",
        f"data.train={shards}", f"model.cache_dir={model_cache}", f"train.output_dir={out}",
        f"resources.storage_path={storage}", f"train.max_steps={SFT_STEPS}",
        "train.checkpoint_every=2", "train.micro_batch_size=4", "train.warmup_steps=2",
        "train.max_grad_norm=0.0", "tracking.enabled=false",
        "resources.num_workers=2", "resources.cpus_per_worker=1", "resources.max_failures=1",
    ]  # fmt: skip


def test_lost_worker_node_resumes_from_shared_checkpoint(cluster, shards, model_cache, tmp_path):
    # The uninterrupted reference: the same recipe, two local ranks, no Ray.
    ref_cwd = _clean_dir(tmp_path, "ref-cwd")
    ref_out = tmp_path / "ref"
    ref = _vlalign(
        [*_sft_args(shards, ref_out, model_cache, tmp_path / "unused"), "--no-ray", "--nproc", "2"],
        ref_cwd,
        cluster.client_env,
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    expected = _losses(ref_out, SFT_STEPS)
    assert len(expected) == SFT_STEPS

    lost = cluster.add_node("worker-1")
    cwd = _clean_dir(tmp_path, "cwd")
    out, storage = tmp_path / "drill", tmp_path / "shared-storage"
    proc = _start_vlalign(
        [*_sft_args(shards, out, model_cache, storage), "--address", cluster.address],
        cwd,
        cluster.client_env,
    )
    try:
        first = storage / "tiny-sft" / "step-000002" / "trainer_state.json"
        _wait("the first checkpoint in shared storage", first.is_file, RUN_TIMEOUT_S, proc)
        head_workers = cluster.nodes[0].running("RayTrainWorker")
        lost_workers = lost.running("RayTrainWorker")
        assert len(head_workers) == 1 and len(lost_workers) == 1, (head_workers, lost_workers)
        # Ray Train's controller registers the reported checkpoint in its snapshot (a restart
        # resumes from the snapshot's latest checkpoint; on a busy machine this lags the upload)
        snapshot = storage / "tiny-sft" / "checkpoint_manager_snapshot.json"

        def registered() -> bool:
            with contextlib.suppress(OSError):
                return "step-000002" in snapshot.read_text()
            return False

        _wait("Ray Train registering the first checkpoint", registered, RUN_TIMEOUT_S, proc)
        assert proc.poll() is None, "the run ended before the node could be lost"
        assert lost.kill() > 3  # raylet, agents, the training worker, ...
        replacement = cluster.add_node(f"worker-{len(cluster.nodes)}")
        seen: set[int] = set()

        def replacement_trains() -> bool:
            seen.update(replacement.running("RayTrainWorker"))
            return proc.poll() is not None

        _wait("the run after the node loss", replacement_trains, RUN_TIMEOUT_S, poll=0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
    stdout, _ = _finish(proc, cwd)
    assert seen, "no training worker ran on the replacement node"
    line = next(ln for ln in stdout.splitlines() if ln.startswith("done: tiny-sft:"))
    this_run = int(line.split(": ")[2].split()[0])  # "done: tiny-sft: N steps this run (...)"
    assert 0 < this_run < SFT_STEPS, line  # restarted from a checkpoint, not from step 0
    assert (SFT_STEPS - this_run) % 2 == 0, line  # a checkpoint step (checkpoint_every 2)
    assert f"(step {SFT_STEPS} of {SFT_STEPS})" in line
    assert _losses(out, SFT_STEPS) == pytest.approx(expected, abs=1e-6, rel=0)
    final = storage / "tiny-sft" / f"step-{SFT_STEPS:06d}" / "trainer_state.json"
    assert json.loads(final.read_text())["losses"] == _losses(out, SFT_STEPS)
    assert (out / "export").is_dir()


GRPO_STEPS = 8


def _grpo_args(shards: Path, out: Path, model_cache: str) -> list[str]:
    return [
        "run", "tiny/grpo", "--no-eval",
        f"data.train={shards}", f"model.cache_dir={model_cache}", f"train.output_dir={out}",
        f"train.max_steps={GRPO_STEPS}", "train.checkpoint_every=1", "train.micro_batch_size=2",
        "train.export=none", "method.max_new_tokens=6", "method.rollout.placement=ray",
        "method.rollout.num_workers=1", "method.rollout.cpus_per_worker=1",
        "tracking.enabled=false", "resources.num_workers=1", "resources.cpus_per_worker=1",
    ]  # fmt: skip


def test_lost_rollout_actor_node_is_replaced(cluster, shards, model_cache, tmp_path):
    # The uninterrupted reference: the same recipe without Ray Train (its rollout actor in a
    # local Ray instance that the command starts itself).
    ref_cwd = _clean_dir(tmp_path, "ref-cwd")
    ref_out = tmp_path / "ref"
    ref = _vlalign(
        [*_grpo_args(shards, ref_out, model_cache), "--no-ray"], ref_cwd, cluster.client_env
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    expected = _losses(ref_out, GRPO_STEPS)

    cwd = _clean_dir(tmp_path, "cwd")
    out = tmp_path / "drill"
    proc = _start_vlalign(
        [*_grpo_args(shards, out, model_cache), "--address", cluster.address],
        cwd,
        cluster.client_env,
    )
    try:
        # The training worker takes the head's CPU; the rollout actor waits for a node.
        head = cluster.nodes[0]
        _wait("the training worker", lambda: head.running("RayTrainWorker"), RUN_TIMEOUT_S, proc)
        lost = cluster.add_node("worker-1")
        first = out / "checkpoints" / "step-000001" / "trainer_state.json"
        _wait("the first step's checkpoint", first.is_file, RUN_TIMEOUT_S, proc)
        assert len(lost.running("RolloutWorker")) == 1  # the actor is on the node to be lost
        assert proc.poll() is None, "the run ended before the node could be lost"
        assert lost.kill() > 3
        replacement = cluster.add_node(f"worker-{len(cluster.nodes)}")
        seen: set[int] = set()

        def replacement_generates() -> bool:
            seen.update(replacement.running("RolloutWorker"))
            return proc.poll() is not None

        _wait("the run after the node loss", replacement_generates, RUN_TIMEOUT_S, poll=0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
    stdout, _ = _finish(proc, cwd)
    assert seen, "no rollout actor ran on the replacement node"
    # The training worker was never restarted: every step ran in this attempt.
    assert f"done: tiny-grpo: {GRPO_STEPS} steps this run (step {GRPO_STEPS} of" in stdout
    assert _losses(out, GRPO_STEPS) == pytest.approx(expected, abs=1e-6, rel=0)
    metrics = json.loads(
        (out / "checkpoints" / f"step-{GRPO_STEPS:06d}" / "trainer_state.json").read_text()
    )["metrics"]
    assert all(m["sync/parity_ok"] == 1.0 for m in metrics)
