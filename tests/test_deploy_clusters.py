"""The cluster deployments beyond compose: Kubernetes manifests, Helm values, HPC (dask-jobqueue).

Like ``test_deploy.py``, these check the files themselves (no cluster here): they parse,
name what exists, and run mangaka's workers the way the runtime expects.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from flows.runtime import LOW_LEVEL_LOG_LENGTH
from tests.test_deploy import AWS_VARS, DEPLOY, JOBQUEUE, K8S, PREFECT_YAML, WORK_POOL, _load


@pytest.fixture(scope="module")
def prefect_yaml() -> dict[str, Any]:
    return dict(_load(PREFECT_YAML))


# -- Kubernetes ---------------------------------------------------------------------------


def _k8s_docs() -> list[dict[str, Any]]:
    return [d for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d and "kind" in d]


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_spec["containers"]


def _substitute_k8s_vars(args: list[str], env: dict[str, str]) -> list[str]:
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], a) for a in args]


@pytest.fixture(scope="module")
def dask_resources() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    docs = _k8s_docs()
    clusters = [d for d in docs if d["kind"] == "DaskCluster"]
    groups = [d for d in docs if d["kind"] == "DaskWorkerGroup"]
    assert len(clusters) == 1 and groups
    for d in clusters + groups:
        assert d["apiVersion"] == "kubernetes.dask.org/v1", d["kind"]
    return clusters[0], groups


def test_dask_cluster_and_gpu_worker_group(dask_resources: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    from distributed.cli.dask_worker import main as dask_worker

    cluster, groups = dask_resources
    name, namespace = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    # what the operator injects into every worker container
    injected = {
        "DASK_SCHEDULER_ADDRESS": f"tcp://{name}-scheduler.{namespace}.svc.cluster.local:8786",
        "DASK_WORKER_NAME": "worker-0",
    }
    (cpu,) = _containers(cluster["spec"]["worker"]["spec"])
    argv = _substitute_k8s_vars(cpu.get("command", []) + cpu.get("args", []), injected)
    assert argv[:2] == ["dask", "worker"]
    assert dask_worker.make_context("dask worker", argv[2:]).params["nthreads"] == 1
    ports = {p["name"]: p["port"] for p in cluster["spec"]["scheduler"]["service"]["ports"]}
    assert ports["tcp-comm"] == 8786

    gpu_groups = []
    for group in groups:
        assert group["spec"]["cluster"] == name
        assert group["metadata"].get("namespace", namespace) == namespace
        pod = group["spec"]["worker"]["spec"]
        for c in _containers(pod):
            if "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}):
                continue
            gpu_groups.append(group["metadata"]["name"])
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) == 1
            words = " ".join(c.get("command", []) + c.get("args", []))
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert "--resources GPU=1" in words or env.get("DASK_DISTRIBUTED__WORKER__RESOURCES__GPU") == "1"
            assert pod.get("nodeSelector") or pod.get("tolerations")
    assert gpu_groups, "no worker group requests nvidia.com/gpu"


def test_k8s_credentials_come_from_secrets() -> None:
    values = _load(K8S / "prefect-worker-values.yaml")
    envs: list[dict[str, Any]] = list(values["worker"]["extraEnvVars"])
    for doc in _k8s_docs():
        spec = doc["spec"]
        pods = [spec["scheduler"]["spec"], spec["worker"]["spec"]] if doc["kind"] == "DaskCluster" else []
        pods += [spec["worker"]["spec"]] if doc["kind"] == "DaskWorkerGroup" else []
        for pod in pods:
            for c in _containers(pod):
                envs += c.get("env", [])
    aws = [e for e in envs if e["name"].startswith("AWS_")]
    assert {e["name"] for e in aws} >= set(AWS_VARS)
    for e in aws:
        assert "value" not in e and "secretKeyRef" in e["valueFrom"], e["name"]


def test_helm_values_point_the_work_pool_at_the_dask_cluster(
    dask_resources: tuple[dict[str, Any], list[dict[str, Any]]], prefect_yaml: dict[str, Any]
) -> None:
    cluster, _ = dask_resources
    worker = _load(K8S / "prefect-worker-values.yaml")["worker"]
    assert worker["config"]["workPool"] == WORK_POOL
    assert {d["work_pool"]["name"] for d in prefect_yaml["deployments"]} == {WORK_POOL}
    assert worker["config"]["type"] == "process"
    env = {e["name"]: e for e in worker["extraEnvVars"]}
    name, namespace = cluster["metadata"]["name"], cluster["metadata"]["namespace"]
    address = urlparse(env["MANGAKA_DASK_ADDRESS"]["value"])
    assert address.scheme == "tcp" and address.port == 8786
    assert address.hostname in {f"{name}-scheduler.{namespace}.svc", f"{name}-scheduler.{namespace}.svc.cluster.local"}
    # Dask workers report to the Prefect API the worker's runs use
    api = worker["serverApiConfig"]["apiUrl"]
    (cpu,) = _containers(cluster["spec"]["worker"]["spec"])
    assert {e["name"]: e.get("value") for e in cpu["env"]}["PREFECT_API_URL"] == api


# -- HPC (dask-jobqueue) ------------------------------------------------------------------


def test_jobqueue_config_has_cpu_and_gpu_workers() -> None:
    jq = _load(JOBQUEUE)["jobqueue"]
    cpu, gpu = jq["slurm"], jq["slurm-gpu"]
    assert cpu["cores"] == cpu["processes"]  # one thread per worker process
    assert gpu["cores"] == gpu["processes"] == 1
    assert " ".join(gpu["worker-extra-args"]) == "--resources GPU=1"
    assert any(d.startswith("--gres=gpu:") for d in gpu["job-extra-directives"])
    assert not any("GPU" in a for a in cpu["worker-extra-args"])
    # the GPU section inherits every key dask-jobqueue reads without a default
    assert set(cpu) <= set(gpu)


def test_jobqueue_job_scripts() -> None:
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not a mangaka dependency (pip install dask-jobqueue)")
    import dask
    from dask_jobqueue.slurm import SLURMJob

    with dask.config.set(_load(JOBQUEUE)):
        cpu = SLURMJob(scheduler="tcp://scheduler:8786", name="cpu", config_name="slurm").job_script()
        gpu = SLURMJob(scheduler="tcp://scheduler:8786", name="gpu", config_name="slurm-gpu").job_script()
    assert "--nthreads 1" in cpu and "--resources" not in cpu
    assert "#SBATCH --gres=gpu:1" in gpu and "--nthreads 1" in gpu and "--resources GPU=1" in gpu


def test_slurm_cluster_script_help() -> None:
    spec = importlib.util.spec_from_file_location("slurm_cluster", DEPLOY / "hpc" / "slurm_cluster.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0


def test_worker_images_unset_dasks_malloc_trim_threshold() -> None:
    """Every worker image and the HPC config carry the Dask config that unsets MALLOC_TRIM_THRESHOLD_."""
    import copy

    import dask
    from distributed.nanny import _get_env_variables

    deploy = Path(__file__).resolve().parents[1] / "deploy"
    for path in (deploy / "dask.yaml", deploy / "hpc" / "distributed.yaml"):
        cfg = yaml.safe_load(path.read_text())
        assert cfg["distributed"]["nanny"]["pre-spawn-environ"] == {"MALLOC_TRIM_THRESHOLD_": None}
        assert cfg["distributed"]["worker"]["profile"]["enabled"] is False
        assert cfg["distributed"]["scheduler"]["worker-saturation"] == 1.0
        assert cfg["distributed"]["admin"]["low-level-log-length"] == LOW_LEVEL_LOG_LENGTH
        # a config file is deep-merged into Dask's defaults, as dask does with /etc/dask/*.yaml
        merged = dask.config.update(
            copy.deepcopy(dask.config.get("distributed.nanny.pre-spawn-environ")),
            cfg["distributed"]["nanny"]["pre-spawn-environ"],
        )
        with dask.config.set({"distributed.nanny.pre-spawn-environ": merged}):
            env = _get_env_variables("distributed.nanny.pre-spawn-environ")
        assert "MALLOC_TRIM_THRESHOLD_" not in env and env["OMP_NUM_THREADS"] == "1"
    dockerfile = (deploy / "Dockerfile").read_text()
    assert dockerfile.count("COPY deploy/dask.yaml /etc/dask/mangaka.yaml") == 2  # cpu and cuda
    assert "!deploy/dask.yaml" in (deploy / "Dockerfile.dockerignore").read_text()
