"""deploy/: everything that can be checked without Docker, Kubernetes, Helm or SLURM.

This machine (and CI) has no Docker engine and no Kubernetes cluster, so the files under
deploy/ are checked by what they say, against the real code they drive: every YAML file
parses; the compose services reference only services that exist, build from Dockerfile
stages that exist, and their ``mangaka`` and ``dask`` command lines parse with the real
parsers; prefect.yaml passes Prefect's own prefect.yaml model, its entrypoints load as the
flows they name, its parameters fit those flows' schemas, every deployment builds, and it
holds exactly the deployments that ``mangaka serve`` serves; the Dask operator resources,
the Helm values and the dask-jobqueue configuration agree with each other and with how
mangaka finds its GPUs (the Dask resource ``GPU=1``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
PREFECT_YAML = DEPLOY / "prefect.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"
JOBQUEUE = DEPLOY / "hpc" / "jobqueue.yaml"

WORK_POOL = "mangaka"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "0.0.0.0"}
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")

# Compose interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error};
# $$ is a literal $.
_COMPOSE_VAR = re.compile(r"\$\{(?P<name>\w+)(?:(?P<sep>:?[-?])(?P<default>[^}]*))?\}")
_CREDENTIAL = re.compile(r"SECRET|PASSWORD|ACCESS_KEY|ROOT_USER|TOKEN")
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s\"'`]+")


def _yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _walk_strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk_strings(k)
            yield from _walk_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_strings(v)


def _substitute(m: re.Match[str]) -> str:
    if m["sep"] and m["sep"].endswith("?"):  # required: what the operator sets, here a stand-in
        return f"<{m['name']}>"
    return m["default"] or ""


def _interpolate(obj: Any) -> Any:
    """What compose makes of the file with no variable set: every default (``<VAR>`` for required ones)."""
    if isinstance(obj, str):
        return _COMPOSE_VAR.sub(_substitute, obj.replace("$$", "\0")).replace("\0", "$")
    if isinstance(obj, dict):
        return {_interpolate(k): _interpolate(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_interpolate(v) for v in obj]
    return obj


def _argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _dockerfile_stages(path: Path) -> dict[str, str]:
    """Stage name -> its instructions, for the stages named ``FROM ... AS <name>``."""
    stages = {}
    for chunk in re.split(r"^(?=FROM\s)", path.read_text(), flags=re.MULTILINE | re.IGNORECASE)[1:]:
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)\s*$", chunk.splitlines()[0], flags=re.IGNORECASE)
        if m:
            stages[m[1]] = chunk
    return stages


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _interpolate(_load(COMPOSE))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture()
def prefect_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    monkeypatch.chdir(ROOT)  # file entrypoints resolve against the repository root
    return tmp_path


# -- every YAML file ---------------------------------------------------------------------


def test_every_yaml_file_parses() -> None:
    files = _yaml_files()
    names = {p.relative_to(DEPLOY).as_posix() for p in files}
    assert {"docker-compose.yml", "prefect.yaml", "k8s/dask-cluster.yaml", "k8s/dask-gpu-workergroup.yaml"} <= names
    assert {"k8s/prefect-worker-values.yaml", "hpc/jobqueue.yaml"} <= names
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), path


# -- docker compose ----------------------------------------------------------------------


def test_compose_variables_have_harmless_defaults_and_credentials_none() -> None:
    """Settings default to something harmless; credentials have no default: compose refuses
    to start until the operator sets them (``${VAR:?message}``)."""
    text = COMPOSE.read_text()
    found = list(_COMPOSE_VAR.finditer(text.replace("$$", "")))
    assert found
    required = set()
    for m in found:
        if _CREDENTIAL.search(m["name"]):
            assert m["sep"] == ":?", f"${{{m['name']}}} must be required (${{{m['name']}:?...}}), not defaulted"
            assert m["name"] in m["default"], f"the error of ${{{m['name']}}} should name it"
            required.add(m["name"])
        else:
            assert m["sep"] == ":-", f"${{{m['name']}}} has no default"
    assert required == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "POSTGRES_PASSWORD"}


def test_compose_holds_no_credential_and_publishes_ports_on_loopback_only() -> None:
    raw = _load(COMPOSE)
    # no credential literal: every credential-like setting is a required variable
    for name, svc in raw["services"].items():
        for key, value in _env(svc).items():
            if _CREDENTIAL.search(key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", value), f"{name}: {key} is a literal ({value!r})"
            for m in _COMPOSE_VAR.finditer(value):
                if _CREDENTIAL.search(m["name"]):
                    assert m["sep"] == ":?", f"{name}: {key} has a default credential"
    text = COMPOSE.read_text()
    for literal in ("dev-only", "minioadmin", "changeme", "password123"):
        assert literal not in text, literal
    # every published port is bound to one address, 127.0.0.1 unless the operator says otherwise
    published = 0
    for name, svc in _interpolate(raw)["services"].items():
        for port in svc.get("ports") or ():
            assert isinstance(port, str), f"{name}: use the short syntax HOST_IP:PORT:PORT ({port!r})"
            parts = port.split(":")
            assert len(parts) == 3, f"{name}: {port!r} publishes on all interfaces"
            assert parts[0] == "127.0.0.1", f"{name}: {port!r} is not bound to 127.0.0.1"
            published += 1
    assert published == 4


def test_compose_references_only_defined_services(services: dict[str, dict[str, Any]]) -> None:
    names = set(services)
    assert {"postgres", "prefect-server", "minio", "minio-init", "dask-scheduler"} <= names
    assert {"dask-worker-cpu", "dask-worker-gpu", "mangaka-serve"} <= names
    for name, svc in services.items():
        assert set(svc.get("depends_on") or ()) <= names - {name}, name

    hosts: set[str] = set()
    buckets: set[str] = set()
    for text in _walk_strings(services):
        for url in _URL.findall(text):
            parsed = urlparse(url)
            if parsed.scheme in ("s3", "s3a"):
                buckets.add(parsed.hostname or "")
                continue
            assert parsed.hostname in names | LOCAL_HOSTS, f"{url}: no service {parsed.hostname!r}"
            hosts.add(parsed.hostname or "")
    assert {"prefect-server", "minio", "dask-scheduler", "postgres"} <= hosts

    # every bucket the services use is the one minio-init creates
    init = " ".join(_argv(services["minio-init"].get("entrypoint")) + _argv(services["minio-init"]["command"]))
    created = set(re.findall(r"mc mb\s+(?:--\S+\s+)*\w+/([\w.-]+)", init))
    assert buckets and buckets <= created


def test_compose_builds_from_existing_dockerfile_stages(services: dict[str, dict[str, Any]]) -> None:
    built = {name: svc["build"] for name, svc in services.items() if "build" in svc}
    assert {"dask-scheduler", "dask-worker-cpu", "dask-worker-gpu", "mangaka-serve"} <= set(built)
    for name, build in built.items():
        context = (COMPOSE.parent / build["context"]).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile}"
        assert build["target"] in _dockerfile_stages(dockerfile), f"{name}: no stage {build['target']}"
    assert built["dask-worker-gpu"]["target"] == "cuda"
    assert built["dask-worker-cpu"]["target"] == built["mangaka-serve"]["target"] == "cpu"


def test_dockerfile_copies_only_what_exists_and_is_not_ignored() -> None:
    stages = _dockerfile_stages(DOCKERFILE)
    for target in ("cpu", "cuda"):  # the final images: mangaka as entrypoint, not root
        assert re.search(r'^ENTRYPOINT \["mangaka"\]', stages[target], flags=re.MULTILINE), target
        assert re.findall(r"^USER (\S+)", stages[target], flags=re.MULTILINE) == ["mangaka:mangaka"], target
    assert 'pip install --no-deps "dask-cuda==' in stages["cuda-build"]
    assert not any("dask-cuda" in stages[s] or "dask_cuda" in stages[s] for s in ("cpu-build", "cpu"))
    assert "download.pytorch.org/whl/cpu" in stages["cpu-build"]
    text = DOCKERFILE.read_text()
    kept = {
        line[1:].rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    sources: list[str] = []
    defined: list[str] = []
    for line in text.splitlines():
        if m := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, flags=re.IGNORECASE):
            defined.append(m[1])
        elif m := re.match(r"COPY\s+--from=(\S+)", line):
            assert m[1] in defined, f"COPY --from={m[1]}: no earlier stage of that name"
        elif line.startswith("COPY "):
            sources += line.split()[1:-1]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert src in kept, f"{src} is excluded from the build context by Dockerfile.dockerignore"


def test_compose_workers_reach_prefect_and_s3(services: dict[str, dict[str, Any]]) -> None:
    minio = _env(services["minio"])
    for name in ("dask-worker-cpu", "dask-worker-gpu", "mangaka-serve", "prefect-worker"):
        env = _env(services[name])
        assert env.get("PREFECT_API_URL") == "http://prefect-server:4200/api", name
        assert set(AWS_VARS) <= set(env), name
        assert urlparse(env["AWS_ENDPOINT_URL"]).hostname == "minio", name
        # the credentials MinIO is started with
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (
            minio["MINIO_ROOT_USER"],
            minio["MINIO_ROOT_PASSWORD"],
        ), name


def test_compose_gpu_worker_advertises_gpu_and_reserves_devices(services: dict[str, dict[str, Any]]) -> None:
    gpu = services["dask-worker-gpu"]
    argv = _argv(gpu.get("entrypoint")) + _argv(gpu["command"])
    assert argv[:3] == ["dask", "cuda", "worker"]
    assert "GPU=1" in argv and argv[argv.index("GPU=1") - 1] == "--resources"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", ()) for d in devices)
    assert "gpu" in gpu.get("profiles", ())  # a CPU-only machine starts without it


def test_compose_mangaka_command_lines_parse(services: dict[str, dict[str, Any]]) -> None:
    from flows.cli import parse_args

    parsed = {}
    for name, svc in services.items():
        entrypoint = _argv(svc.get("entrypoint"))
        if not entrypoint and "build" in svc:
            entrypoint = ["mangaka"]  # the image's ENTRYPOINT
        argv = entrypoint + _argv(svc.get("command"))
        if argv and Path(argv[0]).name == "mangaka":
            try:
                parsed[name] = parse_args(argv[1:])
            except SystemExit:
                pytest.fail(f"{name}: `{shlex.join(argv)}` is not a valid mangaka command line")
    serve = parsed["mangaka-serve"]
    assert serve.command == "serve"
    assert serve.workspace == "s3://mangaka/workspace"
    assert serve.dask_address == "tcp://dask-scheduler:8786"
    assert serve.src == "s3://mangaka/incoming"
    assert serve.gpu_limit == 1


def test_compose_dask_command_lines_parse(services: dict[str, dict[str, Any]]) -> None:
    """``dask scheduler`` and ``dask worker`` lines through distributed's own click commands."""
    from distributed.cli.dask_scheduler import main as dask_scheduler
    from distributed.cli.dask_worker import main as dask_worker

    scheduler = services["dask-scheduler"]
    argv = _argv(scheduler["entrypoint"]) + _argv(scheduler["command"])
    assert argv[:2] == ["dask", "scheduler"]
    port = dask_scheduler.make_context("dask scheduler", argv[2:]).params["port"]

    worker = services["dask-worker-cpu"]
    argv = _argv(worker["entrypoint"]) + _argv(worker["command"])
    assert argv[:2] == ["dask", "worker"]
    params = dask_worker.make_context("dask worker", argv[2:]).params
    assert params["nthreads"] == 1
    assert params["scheduler"] == f"tcp://dask-scheduler:{port}"


# -- prefect.yaml -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_yaml() -> dict[str, Any]:
    return _load(PREFECT_YAML)


def test_prefect_yaml_passes_prefects_own_model(prefect_yaml: dict[str, Any]) -> None:
    """The model ``prefect deploy`` validates prefect.yaml with (it skips what fails it)."""
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(prefect_yaml)
    assert len(model.deployments) == len(prefect_yaml["deployments"])
    pairs = [(d.flow_name, d.name) for d in model.deployments]
    assert len(set(pairs)) == len(pairs), "duplicate deployments"
    for d in model.deployments:
        assert d.entrypoint and d.flow_name and d.name, d
        assert d.work_pool is not None and d.work_pool.name == WORK_POOL, d.name


def test_prefect_yaml_deploys_what_mangaka_serve_serves(prefect_yaml: dict[str, Any]) -> None:
    from flows.serve import NIGHTLY_CRON, workspace_flows

    deployments = prefect_yaml["deployments"]
    backfills = [d["flow_name"] for d in deployments if d["name"] == "backfill"]
    assert sorted(backfills) == sorted(workspace_flows())
    (nightly,) = [d for d in deployments if d["name"] == "nightly"]
    assert nightly["flow_name"] == "build-dataset"
    assert len(deployments) == len(backfills) + 1
    (schedule,) = nightly["schedules"]
    assert schedule["cron"] == NIGHTLY_CRON


def test_prefect_yaml_nightly_cron_is_valid(prefect_yaml: dict[str, Any]) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    (nightly,) = [d for d in prefect_yaml["deployments"] if d["name"] == "nightly"]
    for item in nightly["schedules"]:
        schedule = CronSchedule(cron=item["cron"], timezone=item.get("timezone"))
        assert schedule.cron == "0 3 * * *"
    with pytest.raises(ValueError):
        CronSchedule(cron="0 3 * *")  # the check would catch a broken one


def test_prefect_yaml_entrypoints_are_the_flows_they_name_and_build(
    prefect_yaml: dict[str, Any], prefect_home: Path
) -> None:
    """Each entrypoint loads (as ``prefect deploy`` loads it) as its flow; each deployment builds."""
    from prefect.deployments.runner import RunnerDeployment
    from prefect.flows import Flow, load_flow_from_entrypoint
    from prefect.utilities.schema_tools import ValidationError, validate

    from flows.serve import workspace_flows

    served = workspace_flows()
    for d in prefect_yaml["deployments"]:
        entrypoint = d["entrypoint"]
        path, _, func = entrypoint.rpartition(":")
        assert (ROOT / path).is_file(), entrypoint
        flow_obj = load_flow_from_entrypoint(entrypoint)
        assert isinstance(flow_obj, Flow), entrypoint
        assert flow_obj.name == d["flow_name"], entrypoint
        # the same function as the flow mangaka serve serves under that name
        twin = served[d["flow_name"]]
        assert getattr(flow_obj.fn, "__wrapped__", flow_obj.fn).__name__ == func
        assert getattr(twin.fn, "__wrapped__", twin.fn).__name__ == func

        params = d.get("parameters") or {}
        schema = flow_obj.parameters.model_dump_for_openapi()
        unknown = set(params) - set(schema["properties"])
        assert not unknown, f"{entrypoint}: the flow has no parameter {unknown}"
        validate(params, schema, raise_on_error=True, ignore_required=True)
        kwargs: dict[str, Any] = {}
        if d.get("schedules"):
            kwargs["cron"] = d["schedules"][0]["cron"]
        dep = flow_obj.to_deployment(name=d["name"], parameters=params, tags=d.get("tags"), **kwargs)
        assert isinstance(dep, RunnerDeployment)
        assert dep.entrypoint == entrypoint
        assert dep.parameters == params
    with pytest.raises(ValidationError):  # and a wrong parameter would be caught
        validate({"workspace": 3}, schema, raise_on_error=True, ignore_required=True)


# -- mangaka serve ------------------------------------------------------------------------


def test_serve_builds_one_nightly_and_a_backfill_per_flow(prefect_home: Path, prefect_yaml: dict[str, Any]) -> None:
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.runner import RunnerDeployment

    from flows.serve import NIGHTLY_CRON, deployments, workspace_flows

    deps = deployments("s3://bucket/ws", src="s3://bucket/in")
    assert all(isinstance(d, RunnerDeployment) for d in deps)
    pairs = [(d.flow_name, d.name) for d in deps]
    assert len(set(pairs)) == len(pairs)
    assert len(deps) == 1 + len(workspace_flows())
    (nightly,) = [d for d in deps if d.name == "nightly"]
    assert nightly.flow_name == "build-dataset"
    assert nightly.parameters == {"workspace": "s3://bucket/ws", "src": "s3://bucket/in"}
    (schedule,) = nightly.schedules
    assert isinstance(schedule.schedule, CronSchedule) and schedule.schedule.cron == NIGHTLY_CRON
    assert {d.flow_name for d in deps if d.name == "backfill"} == set(workspace_flows())
    for d in deps:
        if d.name == "backfill":
            assert d.parameters == {"workspace": "s3://bucket/ws"} and not d.schedules
    # prefect.yaml offers the same deployments to work pools
    assert set(pairs) == {(d["flow_name"], d["name"]) for d in prefect_yaml["deployments"]}
