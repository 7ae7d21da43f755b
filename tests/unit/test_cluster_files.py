"""Every file under cluster/ parses, and holds the fields vlalign relies on.

The KubeRay manifests cannot be applied here (no Kubernetes): the checks are structural (GPU
limits, /dev/shm, auth, volumes that exist) plus the entrypoint parsed by vlalign's own CLI and
its overrides validated against the recipe schema. The launcher YAML is validated with Ray's own
JSON schema. The local scripts are syntax-checked here and run for real in
tests/e2e/test_submit_ray_job.py.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import ray
import yaml

from vlalign.cli import build_parser
from vlalign.config.loading import load_recipe

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"


def _yaml(rel: str) -> dict:
    return yaml.safe_load((CLUSTER / rel).read_text())


def test_every_cluster_file_parses():
    files = sorted(p for p in CLUSTER.rglob("*") if p.is_file())
    kinds = {p.suffix for p in files}
    assert {".yaml", ".json", ".sh", ".md"} <= kinds, kinds
    for p in files:
        if p.suffix == ".yaml":
            assert isinstance(yaml.safe_load(p.read_text()), dict), p
        elif p.suffix == ".json":
            assert isinstance(json.loads(p.read_text()), dict), p
        elif p.suffix == ".sh":
            subprocess.run(["bash", "-n", str(p)], check=True)


# --- local head scripts --------------------------------------------------------------------


def _code_lines(path: Path) -> str:
    return "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#"))


def test_local_head_binds_loopback_only():
    code = _code_lines(CLUSTER / "local" / "start-head.sh")
    assert "--node-ip-address 127.0.0.1" in code
    assert "--dashboard-host 127.0.0.1" in code
    # Without local-only mode Ray rewrites 127.0.0.1 to the machine's address (GCS on all NICs).
    assert "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in code
    assert "0.0.0.0" not in code
    assert "RAY_AUTH_MODE" in code and "auth_token" in code


def test_stop_head_never_stops_every_cluster():
    code = _code_lines(CLUSTER / "local" / "stop-head.sh")
    assert not re.search(r"\bray\s+stop\b", code), "ray stop would end every cluster here"
    assert "$TEMP_DIR/session_" in code


# --- KubeRay --------------------------------------------------------------------------------


def _cluster_specs() -> dict[str, dict]:
    return {
        "raycluster": _yaml("kuberay/raycluster.yaml")["spec"],
        "rayjob": _yaml("kuberay/rayjob.yaml")["spec"]["rayClusterSpec"],
    }


def _pod_specs(spec: dict) -> list[tuple[str, dict]]:
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    pods += [(g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    return pods


def _gib(q: str) -> float:
    m = re.fullmatch(r"(\d+)(Gi|Mi)", q)
    assert m, q
    return int(m.group(1)) / (1024 if m.group(2) == "Mi" else 1)


def test_kuberay_kinds_and_versions():
    assert _yaml("kuberay/raycluster.yaml")["apiVersion"] == "ray.io/v1"
    assert _yaml("kuberay/raycluster.yaml")["kind"] == "RayCluster"
    assert _yaml("kuberay/rayjob.yaml")["kind"] == "RayJob"
    for name, spec in _cluster_specs().items():
        assert spec["rayVersion"] == ray.__version__, name
        assert spec["authOptions"]["mode"] == "token", name
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", name


@pytest.mark.parametrize("name", ["raycluster", "rayjob"])
def test_kuberay_gpu_worker_group(name):
    spec = _cluster_specs()[name]
    gpu_groups = []
    for group in spec["workerGroupSpecs"]:
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        limits = container["resources"]["limits"]
        if int(limits.get("nvidia.com/gpu", 0)) > 0:
            gpu_groups.append(group)
            assert container["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
            assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["DS_ACCELERATOR"] == "cuda"
            assert env["TORCH_EXTENSIONS_DIR"].startswith("/shared/")
    assert gpu_groups, f"{name}: no worker group with nvidia.com/gpu"


@pytest.mark.parametrize("name", ["raycluster", "rayjob"])
def test_kuberay_pods_have_memory_shm_and_defined_volumes(name):
    for group, pod in _pod_specs(_cluster_specs()[name]):
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert set(mounts.values()) <= set(volumes), (name, group)
            shm = volumes[mounts["/dev/shm"]]
            assert shm["emptyDir"]["medium"] == "Memory", (name, group)
            assert _gib(shm["emptyDir"]["sizeLimit"]) >= 8, (name, group)
            assert "/shared" in mounts, (name, group)
            assert c["image"].startswith("ghcr.io/vlalign/vlalign:")


def test_rayjob_entrypoint_is_a_valid_vlalign_run():
    job = _yaml("kuberay/rayjob.yaml")["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[:2] == ["vlalign", "run"]
    assert argv[2].startswith("/recipes/")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and not args.no_ray
    # The overrides must be valid recipe keys: apply them to a shipped recipe.
    recipe = load_recipe("tiny/dpo", args.overrides)
    res = recipe.resources
    assert res.storage_path.startswith("/shared/") and recipe.output_dir.startswith("/shared/")
    assert res.max_failures >= 1
    # The run fits the GPU group KubeRay creates for it.
    spec = job["rayClusterSpec"]
    gpus = sum(
        g["replicas"]
        * int(
            g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)
        )
        for g in spec["workerGroupSpecs"]
    )
    cpus = sum(
        g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
        for g in spec["workerGroupSpecs"]
    )
    assert res.num_workers * res.gpus_per_worker <= gpus
    assert res.num_workers * res.cpus_per_worker <= cpus
    env = yaml.safe_load(job["runtimeEnvYAML"])["env_vars"]
    assert all(isinstance(v, str) for v in env.values())
    assert {"DS_ACCELERATOR", "MLFLOW_TRACKING_URI", "TORCH_EXTENSIONS_DIR"} <= set(env)
    # The recipe file the entrypoint names is mounted on the head, where the driver runs.
    head = spec["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    assert "/recipes" in mounts


# --- Ray cluster launcher -------------------------------------------------------------------


def test_launcher_validates_against_rays_schema():
    import jsonschema

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = _yaml("launcher/aws-gpu.yaml")
    jsonschema.validate(cfg, schema)
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert types[cfg["head_node_type"]]["resources"]["CPU"] == 0
    gpu_types = [
        t
        for name, t in types.items()
        if name != cfg["head_node_type"]
        and re.match(r"(g4dn|g5|g6|g6e|p3|p4d|p4de|p5)\.", t["node_config"]["InstanceType"])
    ]
    assert gpu_types and all(t["max_workers"] > 0 for t in gpu_types)
    opts = " ".join(cfg["docker"]["run_options"])
    assert re.search(r"--shm-size=\d+g", opts)
    assert "RAY_AUTH_MODE=token" in opts
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start


# --- runtime env and DeepSpeed templates ----------------------------------------------------


def test_runtime_env_file_is_what_submit_accepts():
    from ray.runtime_env import RuntimeEnv

    from vlalign.orchestration.submit import load_runtime_env_file

    env = load_runtime_env_file(CLUSTER / "runtime_env.yaml")
    RuntimeEnv(**env)  # Ray's own validation
    assert {"MLFLOW_TRACKING_URI", "DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR"} <= set(env["env_vars"])
    assert {".venv/", "runs/", "mlruns/"} <= set(env["excludes"])
    assert "pip" in env


@pytest.mark.parametrize(
    ("name", "stage", "offload"),
    [("zero2", 2, False), ("zero3", 3, False), ("zero3-offload", 3, True)],
)
def test_deepspeed_templates(name, stage, offload):
    cfg = json.loads((CLUSTER / "deepspeed" / f"{name}.json").read_text())
    zero = cfg["zero_optimization"]
    assert zero["stage"] == stage
    assert ("offload_optimizer" in zero) == offload
    if offload:
        assert zero["offload_optimizer"]["device"] == "cpu"
    # A torch optimizer is passed to DeepSpeed (no fused-Adam build): the template must allow it.
    assert cfg["zero_allow_untested_optimizer"] is True
    assert "optimizer" not in cfg
