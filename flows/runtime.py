"""The run-time every command shares: one Prefect API and one Dask cluster per run.

Prefect without a configured server starts a temporary one in each process that needs it,
and every Dask worker process would then start its own (~15 s each, and runs scattered over
several databases). So the command-line process starts at most one server, exports its
address as ``PREFECT_API_URL`` *before* any worker process exists, and every worker inherits
it. With ``PREFECT_API_URL`` already set (``mangaka serve``, a cluster, CI) nothing is
started.

Nothing here computes; this module must never import ``tasks`` or ``models``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

from prefect_dask import DaskTaskRunner

from flows import RunConfig

log = logging.getLogger(__name__)


def _ensure_prefect_home() -> None:
    # Task modules log through the standard library; Prefect forwards these loggers to the
    # run's logs in the UI when they are named here (workers inherit the variable).
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks,storage")
    # The machine may have no route out; a local server must not try to phone home.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_HOME"] = str(home)


class Api:
    """The run's Prefect API: its URL, and ``wait()`` for a local server that is still starting."""

    def __init__(self, url: str, server: Any = None) -> None:
        self.url, self._server = url, server

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait()
            self._server = None


@contextlib.contextmanager
def prefect_api(wait: bool = True) -> Iterator[Api]:
    """The Prefect API for this run: ``PREFECT_API_URL`` when set, else the embedded default's
    local server (kept between commands, see :mod:`flows.apiserver`), exported as
    ``PREFECT_API_URL`` for this process and every worker it starts. ``wait=False`` returns
    while a new server is still starting (call ``wait()`` before the first flow)."""
    _ensure_prefect_home()
    url = os.environ.get("PREFECT_API_URL")
    if url:
        yield Api(url)
        return
    from flows.apiserver import find_or_start

    server = find_or_start()
    if server.process is not None:
        log.info("starting a local Prefect server at %s (set PREFECT_API_URL to use your own)", server.url)
    _set_api_url(server.url)
    try:
        api = Api(server.url, server)
        if wait:
            api.wait()
        yield api
    finally:
        if "prefect.logging.handlers" in sys.modules:
            # Logs are shipped to the API in batches: flush them while the server still runs.
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=5)
        _set_api_url(None)
        server.stop()


def _set_api_url(url: str | None) -> None:
    """Export ``PREFECT_API_URL`` (or remove it), for this process's Prefect as well: Prefect reads
    its settings from the environment once, when it is imported (the command line imported it
    to build its options)."""
    if url is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = url
    if "prefect.context" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def quiet_dask() -> None:
    """Dask logs every worker start and stop at INFO; operators need its warnings only."""
    import distributed  # noqa: F401 - its import configures these loggers

    for name in (
        "distributed",
        "distributed.scheduler",
        "distributed.nanny",
        "distributed.core",
        "distributed.worker",
        "distributed.http.proxy",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


GPUS_ENV = "MANGAKA_GPUS"


def _torch_has_cuda() -> bool:
    """Whether the installed torch is a CUDA build, read from ``torch/version.py`` without
    importing torch (an import costs the flow process about 500 MB)."""
    spec = importlib.util.find_spec("torch")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        try:
            text = Path(folder, "version.py").read_text()
        except OSError:
            continue
        m = re.search(r"^cuda\s*(?::[^=\n]*)?=\s*(\S+)", text, re.M)
        return m is not None and m[1] != "None"
    return False


def _nvidia_devices() -> int:
    """NVIDIA devices this machine shows (``/dev/nvidia<N>``, as a container runtime hands
    them out; else ``/proc/driver/nvidia/gpus``)."""
    devs = [n for n in _listdir("/dev") if re.fullmatch(r"nvidia\d+", n)]
    return len(devs) or len(_listdir("/proc/driver/nvidia/gpus"))


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def visible_gpus() -> list[str]:
    """The GPUs a LocalCluster may hand its workers, as ``CUDA_VISIBLE_DEVICES`` entries.

    ``MANGAKA_GPUS=N`` says how many (0: none) where the machine cannot be asked; otherwise
    a CUDA build of torch and the NVIDIA devices of the machine, as far as
    ``CUDA_VISIBLE_DEVICES`` lets this process see them (up to its first invalid entry,
    as CUDA reads it). Nothing here imports torch.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    entries: list[str] | None = None
    if visible is not None:
        entries = []
        for tok in visible.split(","):
            tok = tok.strip()
            if not tok or tok.startswith("-"):
                break
            entries.append(tok)
    fixed = os.environ.get(GPUS_ENV, "").strip()
    if fixed:
        try:
            n = int(fixed)
        except ValueError:
            raise ValueError(f"{GPUS_ENV} must be a whole number of GPUs, not {fixed!r}") from None
    else:
        n = _nvidia_devices() if _torch_has_cuda() else 0
    if entries is not None:
        return entries[: max(n, 0)]
    return [str(i) for i in range(max(n, 0))]


def local_gpus() -> int:
    """GPUs this process can use (0 without CUDA): see :func:`visible_gpus`."""
    return len(visible_gpus())


LOW_LEVEL_LOG_LENGTH = 16  # Dask's recent-message and transition logs (see local_cluster)


def local_cluster(n_workers: int | None = None, gpus: int | None = None) -> Any:
    """A LocalCluster of single-threaded worker processes; the first ``gpus`` own a GPU each.

    A GPU worker advertises the Dask resource ``GPU=1`` and sees only its own device
    (``CUDA_VISIBLE_DEVICES``), so GPU-annotated tasks land only there; on a machine without
    a GPU every worker is a CPU worker and the same flows run on the CPU. ``gpus`` defaults
    to the GPUs of this machine (tests pass a fake count).
    """
    import copy

    import dask
    from distributed import LocalCluster

    quiet_dask()
    n = n_workers or default_workers()
    devices = visible_gpus()
    gpus = len(devices) if gpus is None else gpus
    n = max(n, gpus)
    # Dask's statistical profiler samples every worker thread's stack every 10 ms for the
    # dashboard's profile page; this cluster has no dashboard (deploy/dask.yaml: same).
    settings = {
        "distributed.nanny.pre-spawn-environ": worker_environ(),
        "distributed.worker.profile.enabled": False,
        "distributed.scheduler.worker-saturation": 1.0,
    }
    # The scheduler keeps the last messages it sent each worker, and a worker its last task
    # events, for debugging (Dask's default: 1,000 each). A compute-task message holds its
    # task's arguments (a shard spec names each of its 256 sources), and this scheduler lives
    # in the flow process: at the end of a 20,000-image ingest all 79 specs of the run were
    # still alive; with 16, 92 of 1,183 were at 302,652. Set for good in this process, since
    # a worker's send log is made when the worker joins, after the cluster starts;
    # deploy/dask.yaml sets the same for clusters started from deploy/.
    dask.config.set({"distributed.admin.low-level-log-length": LOW_LEVEL_LOG_LENGTH})
    with dask.config.set(settings):
        cluster = LocalCluster(
            n_workers=0,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            # No dashboard, and the scheduler's small HTTP server (health, metrics) on a free
            # loopback port: not on 8787, where another cluster's dashboard may be.
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.WARNING,
            # A worker must never be killed for memory mid-shard on a small laptop: shards are
            # sized so that a task's peak is bounded (see docs/ARCHITECTURE.md).
            memory_limit=0,
        )
        for i in range(n):
            spec = copy.deepcopy(cluster.new_spec)
            if i < gpus:
                spec["options"]["resources"] = {"GPU": 1}
                spec["options"]["env"] = {"CUDA_VISIBLE_DEVICES": devices[i] if i < len(devices) else str(i)}
            cluster.worker_spec[f"{'gpu' if i < gpus else 'cpu'}-{i}"] = spec
        cluster.sync(cluster._correct_state)
        cluster.wait_for_workers(n)
    return cluster


def worker_environ() -> dict[str, Any]:
    """Dask's environment for new worker processes, without ``MALLOC_TRIM_THRESHOLD_``.

    Dask sets it to 64 KiB so that workers hand memory back to the OS; glibc then also
    stops adapting its mmap threshold, so every array over 128 KiB (each decoded image and
    each float temporary of a 512 px image) is a fresh mmap whose pages fault in on first
    touch. Measured on render-lineart xdog, 1,024 images at 512 px on 2 cores: a shard of 256
    took 2.6-3.7 s in a worker with it and 0.55-1.1 s without (0.5-1.0 s in a plain process
    pool). Shard buffers are bounded per task, so the memory it would return is small.
    Clusters started elsewhere (``--dask-address``) should unset it too: see deploy/.
    """
    import dask

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env


@contextlib.contextmanager
def dask_address(config: RunConfig) -> Iterator[str | None]:
    """The run's Dask scheduler: the given one, or a LocalCluster started when first needed.

    With ``--dask-address`` it yields that address. Otherwise it yields None at once, and
    :func:`cluster_address` starts a LocalCluster when the first task is submitted: a run
    with nothing to do (a nightly schedule over a built dataset) never starts one. Started
    beside planning instead, its two worker processes took the CPU from the planning they
    waited on: a no-op re-ingest of 302,652 files took 11.6 s against 7.7 s without them
    on 2 cores. Workers are processes with one thread each (PIL, zstd and torch each use
    their own threads; one task per core avoids oversubscription). Call inside
    :func:`prefect_api` so the workers inherit ``PREFECT_API_URL``.
    """
    global _pending_cluster
    if config.dask_address:
        os.environ[DASK_ADDRESS_ENV] = config.dask_address
        try:
            yield config.dask_address
        finally:
            os.environ.pop(DASK_ADDRESS_ENV, None)
        return
    pending = _pending_cluster = _ClusterWhenNeeded(config.n_workers)
    try:
        yield None
    finally:
        _pending_cluster = None
        os.environ.pop(DASK_ADDRESS_ENV, None)
        pending.close()


class _ClusterWhenNeeded:
    """A LocalCluster started by the first caller of :meth:`result` (thread-safe), closed
    by :meth:`close` if it was."""

    def __init__(self, n_workers: int | None) -> None:
        self.n_workers = n_workers
        self._lock = threading.Lock()
        self._cluster: Any = None

    def result(self) -> Any:
        with self._lock:
            if self._cluster is None:
                self._cluster = local_cluster(self.n_workers)
            return self._cluster

    def start_soon(self) -> None:
        """Start the cluster in a thread of its own (when it is not started yet), so that it
        starts beside what a run still does before its first task; :meth:`result` waits."""
        if self._cluster is None and not self._lock.locked():
            threading.Thread(target=self._start_quietly, name="cluster-start", daemon=True).start()

    def _start_quietly(self) -> None:
        try:
            self.result()
        except Exception as exc:  # the first task's own call raises it again
            log.debug("the LocalCluster did not start: %s", exc)

    def close(self) -> None:
        with self._lock:
            cluster, self._cluster = self._cluster, None
        if cluster is not None:
            try:
                cluster.close()
            except Exception as exc:  # the run's own error (if any) is the one to report
                log.debug("the LocalCluster did not close cleanly: %s", exc)


_pending_cluster: _ClusterWhenNeeded | None = None


def cluster_soon() -> None:
    """Say that the run will submit tasks: its LocalCluster (if it is to have one) starts
    now, beside the run's last steps before its first task (writing its journal, preparing
    arrays). A run with nothing to do never calls this."""
    if _pending_cluster is not None and not os.environ.get(DASK_ADDRESS_ENV):
        _pending_cluster.start_soon()


def cluster_address() -> str | None:
    """The run's Dask scheduler address (``MANGAKA_DASK_ADDRESS``), waiting for a LocalCluster
    that :func:`dask_address` is still starting; None when the run has no cluster yet."""
    address = os.environ.get(DASK_ADDRESS_ENV)
    if address or _pending_cluster is None:
        return address
    global _own_address
    address = _own_address = str(_pending_cluster.result().scheduler_address)
    os.environ[DASK_ADDRESS_ENV] = address
    return address


_own_address: str | None = None  # the LocalCluster this process started (its workers have the API)


@contextlib.contextmanager
def session(config: RunConfig, lazy: bool = False) -> Iterator[str | None]:
    """One Prefect API and one Dask cluster for a whole command; yields the Dask address.
    ``lazy`` (the command line): yield None, and :func:`cluster_address` starts a
    LocalCluster once a task needs it (a run with nothing to do starts none).
    """
    with prefect_api(wait=False) as api, flow_heartbeats(), dask_address(config):
        api.wait()
        yield None if lazy else cluster_address()


def launch(flow: Any, config: RunConfig, **kwargs: Any) -> Any:
    """Run ``flow`` the one way every command does: on one Prefect API, and one Dask
    cluster for the flows that map shard tasks (``mangaka_flow(..., cluster=False)`` marks
    the ones that run in this process, the trainers)."""
    with session(config, lazy=True) if getattr(flow, "mangaka_cluster", True) else prefect_api():
        return flow(**kwargs)


DASK_ADDRESS_ENV = "MANGAKA_DASK_ADDRESS"
HEARTBEATS_ENV = "MANGAKA_FLOW_HEARTBEATS"


def flow_heartbeats() -> contextlib.AbstractContextManager[Any]:
    """Prefect's flow-run heartbeats, unless ``MANGAKA_FLOW_HEARTBEATS=off``.

    A flow run emits a heartbeat event every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds
    (180) from a thread that sleeps in steps of one second; the engine joins that thread
    when the run ends, so every flow run (and every sub-flow of ``build-dataset``) lasts up
    to one second longer than its work. The heartbeats serve an automation that marks silent
    runs as crashed, which operators have to create on their server; mangaka's own run
    records and leases show interrupted runs in ``status`` either way. Switch them off for
    short interactive runs and benchmarks; Prefect's setting cannot say "off" itself.
    """
    value = os.environ.get(HEARTBEATS_ENV, "on").strip().lower()
    if value in ("on", "1", "true", "yes", ""):
        return contextlib.nullcontext()
    if value not in ("off", "0", "false", "no"):
        raise ValueError(f"{HEARTBEATS_ENV} must be on or off, not {value!r}")
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def unjoined_heartbeats() -> None:
    """End a flow run without waiting for its heartbeat thread.

    Prefect's sync engine joins the thread at the end of every flow run, and the thread
    sleeps in steps of one second: every run (and every sub-flow of ``build``) lasted up to
    a second longer than its work. The thread is a daemon that has been told to stop and
    sends nothing more once the run is final, so the run need not wait for it. Applied
    once, when ``flows.ops`` defines the flows.
    """
    import prefect.flow_engine as engine

    original = engine._send_heartbeats
    if getattr(original, "mangaka_unjoined", False):
        return

    def send(flow_engine: Any, join_on_exit: bool = True) -> Any:
        return original(flow_engine, join_on_exit=False)

    send.mangaka_unjoined = True  # type: ignore[attr-defined]
    engine._send_heartbeats = send  # type: ignore[assignment]


class MangakaTaskRunner(DaskTaskRunner):
    """Prefect's DaskTaskRunner on the run's one cluster, found when the first task is submitted.

    The cluster is the one named by ``MANGAKA_DASK_ADDRESS`` (``--dask-address``, or the
    command's LocalCluster); without it (a served deployment run) the first flow that
    submits a task starts a :func:`local_cluster`, publishes its address for the sub-flows
    of the same run, and closes it when it ends. Flows that submit no task start nothing.
    """

    def __init__(self) -> None:
        super().__init__(cluster_class=local_cluster)
        self._map_context: dict[str, Any] | None = None
        self._shared: dict[frozenset[str], dict[str, Any]] | None = None
        self._digest: tuple[Any, str | None] | None = None

    def duplicate(self) -> MangakaTaskRunner:
        return type(self)()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    __hash__ = object.__hash__

    def _context(self) -> dict[str, Any]:
        """The serialised Prefect context, keyed by its settings' digest (see :func:`keyed_context`).

        The digest is computed once per settings context (Prefect keeps one object while the
        settings stay the same), not once per task run a flow submits outside ``map``.
        """
        from prefect.context import SettingsContext, serialize_context

        context = serialize_context()
        settings = SettingsContext.get()
        if self._digest is None or self._digest[0] is not settings:
            self._digest = (settings, settings_digest(context))
        digest = self._digest[1]
        return context if digest is None else {**context, SETTINGS_KEY: digest}

    def map(self, task: Any, parameters: dict[str, Any], wait_for: Any = None) -> Any:
        """Prefect's map, serialising the flow's context once for all its tasks (see submit)."""
        from prefect.context import TagsContext

        if self._shared is not None:  # inside shared_task_context: once per set of tags
            key = frozenset(TagsContext.get().current_tags or ())
            if key not in self._shared:
                self._shared[key] = self._context()
            self._map_context = self._shared[key]
        else:
            self._map_context = self._context()
        try:
            return super().map(task, parameters, wait_for)
        finally:
            self._map_context = None

    def submit(self, task: Any, parameters: dict[str, Any], wait_for: Any = None, dependencies: Any = None) -> Any:
        """Submit one task run to Dask: prefect-dask's submission, minus two per-task costs.

        prefect-dask serialises the whole Prefect context (all settings, with secrets
        rendered) for every task and submits ``pure=True``, so Dask also tokenises that
        context and the task's closure. Both happen in the flow process, one task after the
        other, while the workers wait for work: profiled on render-lineart xdog (8 shards of
        256), submission was 39% of the flow's main-thread time. Here the context is
        serialised once per ``map`` (the settings, flow run and tags of one map are the
        same; only the asset context names the task run) and keys are random
        (``pure=False``: every task run is new anyway). The worker side is prefect-dask's:
        ``run_task_sync`` with the hydrated context.
        """
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        import distributed
        from prefect.context import AssetContext
        from prefect.task_engine import run_task_async, run_task_sync
        from prefect.utilities.annotations import opaque
        from prefect.utilities.engine import collect_task_run_inputs_sync
        from prefect_dask.task_runners import PrefectDaskFuture

        # An opaque parameter (``prefect.utilities.annotations.opaque``: shard specs) holds no
        # future: it is not walked here, nor by Dask (it travels sealed), nor on the worker,
        # where Prefect unwraps it for the task without looking inside.
        walked = {k: v for k, v in parameters.items() if not isinstance(v, opaque)}
        parameters = {**parameters, **self._optimize_futures(walked)}
        wait_for = self._optimize_futures(wait_for) if wait_for else None
        task_run_id = uuid4()
        deps = {
            k: collect_task_run_inputs_sync(v, future_cls=distributed.Future) if k in walked else set()
            for k, v in parameters.items()
        }
        if dependencies:
            deps = {k: v.union(dependencies.get(k, set())) for k, v in deps.items()}
        base = self._map_context or self._context()
        context = {
            **base,
            "asset_context": AssetContext.from_task_and_inputs(
                task=task, task_run_id=task_run_id, task_inputs=deps, copy_to_child_ctx=True
            ).serialize(),
        }

        sent: dict[str, Any] | Sealed = parameters
        if len(walked) < len(parameters):
            if any(deps.values()):  # Dask must see the futures (and pickle spoils an annotation)
                sent = {k: v if k in walked else v.unwrap() for k, v in parameters.items()}
            else:
                sent = Sealed(parameters)

        @functools.wraps(task.fn)
        def run(**kwargs: Any) -> Any:
            require_worker_api()
            if isinstance(kwargs["parameters"], Sealed):
                kwargs["parameters"] = kwargs["parameters"].open()
            if task.isasync:
                return asyncio.run(run_task_async(**kwargs))
            with worker_contexts(kwargs.pop("context")) as context:
                return run_task_sync(**kwargs, context=context)

        future = distributed.Client.submit(
            self.client,
            run,
            pure=False,
            task=task,
            task_run_id=task_run_id,
            parameters=sent,
            wait_for=wait_for,
            dependencies=deps,
            return_type="state",
            context=context,
        )
        return PrefectDaskFuture(wrapped_future=future, task_run_id=task_run_id)

    @property
    def client(self) -> Any:
        if self._client is None:
            address = cluster_address()
            if address:
                self.address, self.cluster_class, self.resolved_cluster_class = address, None, None
                if address != _own_address:
                    check_workers(address)
            else:
                cluster = self._exit_stack.enter_context(local_cluster())
                self._cluster = cluster
                os.environ[DASK_ADDRESS_ENV] = cluster.scheduler_address
                self._exit_stack.callback(os.environ.pop, DASK_ADDRESS_ENV, None)
        return DaskTaskRunner.client.fget(self)  # type: ignore[attr-defined]


class Sealed:
    """A task run's parameters as Dask passes them, not walked: Dask walks a task's
    arguments (lists, tuples, dicts) for futures of its own. The values of the ``opaque``
    parameters travel unwrapped (a Prefect annotation is a tuple, and pickle turns
    ``opaque(x)`` into ``opaque((x,))``) and are wrapped again on the worker by :meth:`open`."""

    __slots__ = ("opaque", "values")

    def __init__(self, parameters: dict[str, Any]) -> None:
        from prefect.utilities.annotations import opaque

        self.opaque = [k for k, v in parameters.items() if isinstance(v, opaque)]
        self.values = {k: v.unwrap() if k in self.opaque else v for k, v in parameters.items()}

    def __reduce__(self) -> tuple[Any, ...]:
        return (_sealed, (self.opaque, self.values))

    def open(self) -> dict[str, Any]:
        from prefect.utilities.annotations import opaque

        return {k: opaque(v) if k in self.opaque else v for k, v in self.values.items()}


def _sealed(keys: list[str], values: dict[str, Any]) -> Sealed:
    sealed = Sealed.__new__(Sealed)
    sealed.opaque, sealed.values = keys, values
    return sealed


SETTINGS_KEY = "mangaka_settings_key"


def settings_digest(context: dict[str, Any]) -> str | None:
    """A digest of a serialised Prefect context's settings (None when it carries none)."""
    import hashlib
    import json

    settings = context.get("settings_context")
    if settings is None:
        return None
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def keyed_context(context: dict[str, Any]) -> dict[str, Any]:
    """A serialised Prefect context with a digest of its settings (see :func:`worker_contexts`)."""
    digest = settings_digest(context)
    return context if digest is None else {**context, SETTINGS_KEY: digest}


_worker_local = threading.local()
HELD_SETTINGS = 4  # sets of settings (and clients) a worker thread keeps


@contextlib.contextmanager
def worker_contexts(context: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """In a worker thread, around one task run: the run's Prefect settings and API client,
    made once per thread for each set of settings and entered anew for each task run.

    Prefect's engine rebuilds both for every task run it hydrates: it validates all its
    settings anew (a pydantic model of some hundreds of fields) and opens two API clients,
    each with a new HTTP connection pool and TLS context. Profiled on a Dask worker running
    xdog shards of 256 images, that was about 13% of the worker's time. The engine takes the
    settings and the client from the context it runs in when they are there, so here they
    are: the same settings (by digest, see :func:`keyed_context`) give the same objects.
    A thread keeps those of the last few sets of settings; an older one's client is closed.
    """
    from prefect.context import SettingsContext, SyncClientContext

    key = context.get(SETTINGS_KEY)
    settings = context.get("settings_context")
    if key is None or settings is None:
        yield context
        return
    held: dict[str, tuple[Any, Any]] = _worker_local.__dict__.setdefault("held", {})
    if key not in held:
        while len(held) >= HELD_SETTINGS:  # the oldest set of settings goes, and its client
            _, old = held.pop(next(iter(held)))
            with contextlib.suppress(Exception):
                old.client.__exit__(None, None, None)
        settings_ctx = SettingsContext(**settings)
        with settings_ctx:  # the client reads the API URL and its options from the settings
            client_ctx = SyncClientContext()
            client_ctx.client.__enter__()
        held[key] = (settings_ctx, client_ctx)
    settings_ctx, client_ctx = held[key]
    rest = {k: v for k, v in context.items() if k not in (SETTINGS_KEY, "settings_context")}
    with settings_ctx:
        token = SyncClientContext.__var__.set(client_ctx)
        try:
            yield rest
        finally:
            SyncClientContext.__var__.reset(token)


WORKER_API_HELP = (
    "start every Dask worker with PREFECT_API_URL set to the Prefect server the flows use "
    "(the same value as the flow's; deploy/README.md, 'What a worker needs')"
)


def require_worker_api() -> None:
    """On a Dask worker, before a task run: refuse to run without ``PREFECT_API_URL``.

    Without it Prefect's background services in the worker (task-run logs, events) would
    start a temporary server of their own in the worker process: its task runs, logs and
    states would land in a database nobody looks at, ~15 s later, once per worker.
    """
    if not os.environ.get("PREFECT_API_URL"):
        where = ""
        with contextlib.suppress(Exception):
            from distributed import get_worker

            where = f" {get_worker().address}"
        raise WorkerSetupError(f"Dask worker{where} has no PREFECT_API_URL: {WORKER_API_HELP}")


class WorkerSetupError(RuntimeError):
    """A Dask worker that cannot run mangaka's tasks as it was started (not retried)."""


def _worker_api_url() -> str | None:
    return os.environ.get("PREFECT_API_URL") or None


def check_workers(address: str) -> None:
    """Before the first task on a cluster mangaka did not start: every worker must have
    ``PREFECT_API_URL`` (see :func:`require_worker_api`); a clear error names those without."""
    from distributed import Client

    with Client(address, timeout=30) as client:
        urls = client.run(_worker_api_url)
    missing = sorted(w for w, url in urls.items() if not url)
    if missing:
        raise WorkerSetupError(
            f"{len(missing)} of {len(urls)} Dask worker(s) of {address} have no PREFECT_API_URL "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): {WORKER_API_HELP}"
        )


@contextlib.contextmanager
def shared_task_context() -> Iterator[None]:
    """Inside a flow run: the tasks that the block maps one by one share one serialised Prefect
    context (per set of tags), as the tasks of one ``map`` do (see ``MangakaTaskRunner.submit``)."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    runner = getattr(ctx, "task_runner", None)
    if not isinstance(runner, MangakaTaskRunner) or runner._shared is not None:
        yield
        return
    runner._shared = {}
    try:
        yield
    finally:
        runner._shared = None


def cluster_workers() -> int:
    """How many workers the run's Dask cluster has (its own LocalCluster: one per core)."""
    address = cluster_address()
    if not address:
        return os.cpu_count() or 1
    from distributed import Client

    with Client(address, timeout=30) as client:
        return max(1, len(client.scheduler_info(n_workers=-1)["workers"]))


def gpu_workers() -> int:
    """How many workers of the run's Dask cluster advertise a ``GPU`` resource.

    GPU tasks are pinned to those (``dask worker --resources GPU=1``); on a cluster
    without any, the same tasks run anywhere, on the CPU.
    """
    address = cluster_address()
    if not address:
        return local_gpus()  # the run's own LocalCluster, started with the first task
    from distributed import Client

    with Client(address, timeout=30) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        return sum(1 for w in workers if w.get("resources", {}).get("GPU", 0) > 0)
