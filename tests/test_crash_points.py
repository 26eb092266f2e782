"""Kill a stage at each of its write points, resume it, and compare with an uninterrupted run.

The write points come from the storage layer (``storage.writepoints``): every data shard,
marker, journal batch, tag, state file, array metadata write and delete, in the command
process and in its Dask workers. A first run counts them; then, for each point chosen, a
fresh copy of the workspace runs the same command with ``MANGAKA_CRASH_AT=n``, and the
process that reaches write ``n`` SIGKILLs the whole process group (command, workers) just
before it. The same command is then run again, to the end, and the workspace must hold
exactly what an uninterrupted run leaves: the same files, byte for byte, except the times
and run ids inside run records, leases and quarantine/marker timestamps.

``make test`` kills ingest-images at two points, and pseudolabel (a new model over old
masks) after its first mask write; ``make test-slow`` kills four stages at every point,
and ingestion on the S3 server at every point.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from storage.location import json_text
from storage.workspace import Workspace
from tests.conftest import gradient, jpeg_bytes
from tests.faults import start_cli
from tests.test_cli import MANGAKA

# Fields that say when, not what: they differ between any two runs.
TIME_FIELDS = {"written", "time", "created", "start", "end", "seconds", "heartbeat"}
# What a run says about itself, not about the data: compared for presence only.
VOLATILE = ("_meta/runs/", "_meta/leases/", "_meta/marker-index/", "_meta/item-counts/")


def normalise(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: normalise(v) for k, v in sorted(obj.items()) if k not in TIME_FIELDS}
    if isinstance(obj, list):
        return [normalise(v) for v in obj]
    return obj


def local_snapshot(root: Path) -> dict[str, str]:
    """Every file of a local workspace: a digest of its bytes (of its JSON less the times)."""
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        key = str(p.relative_to(root))
        if key.startswith(VOLATILE):
            continue
        data = p.read_bytes()
        if key.startswith("_meta/") and key.endswith(".json"):
            data = json.dumps(normalise(json.loads(json_text(data))), sort_keys=True).encode()
        out[key] = hashlib.sha256(data).hexdigest()
    return out


def s3_snapshot(url: str) -> dict[str, str]:
    ws = Workspace(url)
    fs, root = ws.loc.fs, ws.loc.root
    out: dict[str, str] = {}
    for path in sorted(fs.find(root)):
        key = path[len(root) :].lstrip("/")
        if key.startswith(VOLATILE):
            continue
        data = bytes(fs.cat_file(path))
        if key.startswith("_meta/") and key.endswith(".json"):
            data = json.dumps(normalise(json.loads(json_text(data))), sort_keys=True).encode()
        out[key] = hashlib.sha256(data).hexdigest()
    return out


def cli_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANGAKA_")}
    env["PREFECT_HOME"] = str(tmp / "prefect")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    env["MANGAKA_FLOW_HEARTBEATS"] = "off"
    return env


def run_cli(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> int:
    """The command in a process group of its own (a crash kills that group); its exit code."""
    proc = start_cli(args, cwd, env, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise
    if proc.returncode not in (0, -9):
        raise AssertionError(f"mangaka {' '.join(args)} exited {proc.returncode}: {err[-3000:]}")
    # a group killed by a worker: wait until no process of it is left
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    return proc.returncode


class Stage:
    """A command on a prepared workspace, with a way to copy the workspace and read it back."""

    def __init__(
        self, name: str, args: list[str], prepare: Callable[[str], None], rollback: list[str] | None = None
    ) -> None:
        self.name, self.args, self.prepare = name, args, prepare
        # a command that goes back to what the workspace held before (the old model): after
        # a crash of ``args`` it must find every shard either done as before or redone
        self.rollback = rollback


def count_points(stage: Stage, base: str, copy: Callable[[str, str], str], tmp: Path, env: dict[str, str]):
    url = copy(base, "count")
    points = tmp / "points-count"
    run_cli(["--workspace", url, *stage.args], tmp, {**env, "MANGAKA_WRITE_POINTS": str(points)})
    log = (points / "log").read_text().splitlines()
    return url, [line.split(" ", 2)[1:] for line in log]


def crash_and_resume(
    stage: Stage, base: str, copy: Callable[[str, str], str], tmp: Path, env: dict[str, str], n: int
) -> str:
    url = copy(base, f"cut-{n}")
    points = tmp / f"points-{n}"
    crashed_env = {**env, "MANGAKA_WRITE_POINTS": str(points), "MANGAKA_CRASH_AT": str(n)}
    code = run_cli(["--workspace", url, *stage.args], tmp, crashed_env)
    assert (points / "crashed").exists() and code == -9, f"write point {n} was not reached"
    run_cli(["--workspace", url, *stage.args], tmp, env)
    return url


def chosen(points: list[list[str]], every: bool) -> list[int]:
    """All points, or a few: before the second piece of an ingestion's journal, just after
    the first data write (for pseudolabel: masks written, confidence not yet) and the
    first marker write (``make test-slow`` does all)."""
    n = len(points)
    if every:
        return list(range(1, n + 1))
    picks: set[int] = set()
    data = [i for i, (op, key) in enumerate(points, 1) if op == "write" and "/c/" in key]
    marks = [i for i, (op, key) in enumerate(points, 1) if op == "write" and "/markers/" in key]
    pieces = [i for i, (op, key) in enumerate(points, 1) if op == "write" and "/batches/" in key]
    if len(pieces) > 1:  # between two pieces of the journal
        picks.add(pieces[1])
    if data:
        picks.add(min(n, data[0] + 1))
    if marks:
        picks.add(marks[0])
    return sorted(picks) or [max(1, n // 2)]


# -- the stages ------------------------------------------------------------------------------


def image_folder(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"im{i:02d}.jpg").write_bytes(jpeg_bytes(gradient(40, 48, i)))
    (folder / "twin.jpg").write_bytes((folder / "im01.jpg").read_bytes())  # a duplicate
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # quarantined
    return folder


def segmenter_checkpoint(url: str, seed: int, tag: str) -> None:
    """A random-weight U-Net checkpoint (what pseudolabel needs; training is tested elsewhere)."""
    import torch
    from safetensors.torch import save

    from models.registry import create
    from storage.checkpoints import save_checkpoint

    ws = Workspace(url)
    torch.manual_seed(seed)
    model = create("segmenter", "unet-mobilenetv2-small", num_classes=7)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    config = {"model": "unet-mobilenetv2-small", "num_classes": 7, "classes": ws.classes, "size": 32}
    save_checkpoint(ws, "unet", tag, save(state), config, {"miou": 0.0})


def stages(tmp: Path, env: dict[str, str]) -> dict[str, Stage]:
    src = image_folder(tmp / "src", 9)

    def ingested(url: str) -> None:
        run_cli(["--workspace", url, "ingest-images", str(src), "--size", "32", "--shard-size", "4"], tmp, env)

    def relabel(url: str) -> None:  # masks from model A; the run under test brings model B
        ingested(url)
        segmenter_checkpoint(url, 1, "model-a")
        run_cli(["--workspace", url, "pseudolabel", "--engine", "torch"], tmp, env)
        segmenter_checkpoint(url, 2, "model-b")

    return {
        "ingest-images": Stage(
            "ingest-images", ["ingest-images", str(src), "--size", "32", "--shard-size", "4"], lambda url: None
        ),
        "render-lineart": Stage("render-lineart", ["render-lineart", "--method", "xdog"], ingested),
        "render-style": Stage("render-style", ["render-style", "--method", "npr", "--name", "toon"], ingested),
        "pseudolabel": Stage(
            "pseudolabel",
            ["pseudolabel", "--engine", "torch"],
            relabel,
            rollback=["pseudolabel", "--engine", "torch", "--model", "model-a"],
        ),
    }


def local_copy(tmp: Path) -> Callable[[str, str], str]:
    def copy(base: str, name: str) -> str:
        target = tmp / name
        if Path(base).exists():
            shutil.copytree(base, target)
        return str(target)

    return copy


# Journal pieces of two shards (shard size 4): an ingestion writes two, and is killed between.
PIECES = {"MANGAKA_JOURNAL_PIECE": "8"}


def check_stage(name: str, tmp: Path, every: bool) -> None:
    env = {**cli_env(tmp), **PIECES}
    stage = stages(tmp, env)[name]
    base = str(tmp / "base")
    stage.prepare(base)
    copy = local_copy(tmp)
    whole, points = count_points(stage, base, copy, tmp, env)
    expected = local_snapshot(Path(whole))
    assert points, "the stage wrote nothing"
    # pseudolabel's fast check is its rollback below (killed after its first mask write)
    for n in chosen(points, every) if every or stage.rollback is None else []:
        url = crash_and_resume(stage, base, copy, tmp, env, n)
        got = local_snapshot(Path(url))
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        changed = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
        assert not (missing or extra or changed), (
            f"{name} killed before write {n} ({' '.join(points[n - 1])}) then resumed differs from an "
            f"uninterrupted run: missing {missing[:5]}, extra {extra[:5]}, changed {changed[:5]}"
        )
        shutil.rmtree(url)
    if stage.rollback is None:
        return
    # Killed with the new model, then run with the old one: every shard must hold the old
    # model's labels again. A marker left naming the old model over the new model's data
    # would make that run skip the shard and keep the wrong masks.
    before = local_snapshot(Path(base))
    derived = ("corpus/masks", "corpus/confidence", "_meta/markers/corpus/masks", "_meta/markers/corpus/confidence")
    data = [i for i, (op, key) in enumerate(points, 1) if op == "write" and "/c/" in key]
    for n in range(1, len(points) + 1) if every else [data[0] + 1]:
        url = copy(base, f"rollback-{n}")
        points_dir = tmp / f"points-rollback-{n}"
        crashed_env = {**env, "MANGAKA_WRITE_POINTS": str(points_dir), "MANGAKA_CRASH_AT": str(n)}
        assert run_cli(["--workspace", url, *stage.args], tmp, crashed_env) == -9
        run_cli(["--workspace", url, *stage.rollback], tmp, env)
        got = local_snapshot(Path(url))
        wanted = {k: v for k, v in before.items() if k.startswith(derived)}
        assert {k: v for k, v in got.items() if k.startswith(derived)} == wanted, (n, points[n - 1])
        shutil.rmtree(url)


@pytest.mark.parametrize("name", ["ingest-images", "pseudolabel"])
def test_killed_at_write_points_then_resumed_equals_an_uninterrupted_run(
    cluster: str, tmp_path: Path, name: str
) -> None:
    check_stage(name, tmp_path, every=False)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # every point: pseudolabel (with its rollback) takes about 20 minutes
@pytest.mark.parametrize("name", ["ingest-images", "render-lineart", "render-style", "pseudolabel"])
def test_killed_at_every_write_point_then_resumed_equals_an_uninterrupted_run(
    cluster: str, tmp_path: Path, name: str
) -> None:
    check_stage(name, tmp_path, every=True)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_killed_at_every_write_point_on_s3(cluster: str, bucket: str, tmp_path: Path) -> None:
    env = {**cli_env(tmp_path), **PIECES}
    src = image_folder(tmp_path / "src", 9)
    stage = Stage("ingest-images", ["ingest-images", str(src), "--size", "32", "--shard-size", "4"], lambda u: None)

    def copy(base: str, name: str) -> str:
        return f"s3://{bucket}/{name}"

    whole, points = count_points(stage, f"s3://{bucket}/base", copy, tmp_path, env)
    expected = s3_snapshot(whole)
    for n in chosen(points, every=True):
        got = s3_snapshot(crash_and_resume(stage, f"s3://{bucket}/base", copy, tmp_path, env, n))
        assert got == expected, (n, points[n - 1])


def test_the_crash_hook_kills_before_the_write(tmp_path: Path) -> None:
    """The hook itself: numbered across processes, and the process dies before write n."""
    script = (
        "from storage.location import Location\n"
        "loc = Location(r'%s')\n"
        "for i in range(5):\n"
        "    loc.write_bytes(f'k{i}', b'x')\n"
    ) % (tmp_path / "ws")
    env = {**cli_env(tmp_path), "MANGAKA_WRITE_POINTS": str(tmp_path / "p"), "MANGAKA_CRASH_AT": "3"}
    proc = subprocess.run(
        [MANGAKA[0], "-c", script], env=env, cwd=tmp_path, start_new_session=True, capture_output=True
    )
    assert proc.returncode == -9
    assert sorted(p.name for p in (tmp_path / "ws").iterdir() if not p.name.startswith(".")) == ["k0", "k1"]
    assert (tmp_path / "p" / "log").read_text().splitlines() == ["1 write k0", "2 write k1", "3 write k2"]
