"""The command line end to end, as a user runs it, in a temporary directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_hostile

MANGAKA = [sys.executable, "-m", "flows.cli"]


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(MANGAKA + args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600)


def test_fresh_process_synth_ingest_status_export(tmp_path: Path) -> None:
    """No server, no cluster given: the command starts its own, once, and exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MANGAKA_"))}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(MANGAKA + list(args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)

    r = cli("synth", "corpus", "--count", "30", "--annotated", "6", "--size", "64", "--seed", "2")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "corpus" / "labelme").glob("*.json"))) == 6
    assert len(list((tmp_path / "corpus" / "images").glob("*.jpg"))) == 24
    assert len(list((tmp_path / "corpus" / "truth").glob("*.png"))) == 30
    write_hostile(tmp_path / "corpus" / "images")

    r = cli("--workspace", "ws", "ingest-images", "corpus/images", "--size", "64")
    assert r.returncode == 0, r.stderr
    assert "ingested 24 new images" in r.stdout and "4 quarantined" in r.stdout

    r = cli("--workspace", "ws", "status", "--json")
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert status["stages"]["corpus/images"] == {"done": 24, "total": 24}
    assert len(status["quarantine"]) == 4 and all(e["reason"] for e in status["quarantine"])
    (last,) = status["runs"]  # the runs of the workspace, newest first
    assert last["name"] == "ingest-images from images on ws" and last["state"] == "COMPLETED"
    assert status["models"] == {}

    r = cli("--workspace", "ws", "export", "corpus/images", "out")
    assert r.returncode == 0, r.stderr
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert len(pngs) == 24 and pngs[0].stem == "s2-000006"
    im = Image.open(pngs[0])
    assert im.mode == "RGB" and im.size == (64, 64)


def test_usage_errors_exit_2_with_one_line(cluster: str, tmp_path: Path) -> None:
    r = run([], tmp_path)
    assert r.returncode == 2
    r = run(["no-such-command"], tmp_path)
    assert r.returncode == 2
    r = run(["ingest-images", "missing-folder"], tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr
    r = run(["export", "corpus/images", "out"], tmp_path, {"MANGAKA_WORKSPACE": str(tmp_path / "empty")})
    assert r.returncode == 2 and "no array" in r.stderr
    no_server = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    r = subprocess.run([*MANGAKA, "serve"], cwd=tmp_path, env=no_server, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "needs a Prefect server" in r.stderr and "PREFECT_API_URL" in r.stderr
    r = run(["serve", "--cron", "not a cron"], tmp_path)
    assert r.returncode == 2 and "--cron" in r.stderr
    r = run(["pseudolabel", "--engine", "onnxruntime", "--precision", "bf16"], tmp_path)
    assert r.returncode == 2 and "engine onnxruntime runs fp32 on the CPU" in r.stderr
    r = run(["pseudolabel", "--readers", "-1"], tmp_path)
    assert r.returncode == 2 and "readers" in r.stderr


def test_a_workspace_keeps_its_size(cluster: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.full((40, 40, 3), 50, np.uint8)).save(src / "a.png")
    args = ["--dask-address", cluster, "--workspace", "ws", "ingest-images", "src"]
    assert run([*args, "--size", "32"], tmp_path).returncode == 0
    Image.fromarray(np.full((40, 40, 3), 60, np.uint8)).save(src / "b.png")
    r = run([*args, "--size", "48"], tmp_path)
    assert r.returncode == 2 and "--size" in r.stderr


def test_quarantine_only_corpus_still_exits_0(cluster: str, tmp_path: Path) -> None:
    write_hostile(tmp_path / "bad")
    r = run(["--dask-address", cluster, "--workspace", "ws", "ingest-images", "bad"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "4 quarantined" in r.stdout and "1 files not named like images" in r.stdout


@pytest.mark.slow  # the fast suite kills ingest-images at its write points (tests/test_crash_points.py)
def test_killed_run_resumes_to_the_same_result(tmp_path: Path) -> None:
    """SIGKILL a real ingest-images mid-run (server, cluster and all), run it again."""
    import hashlib
    import signal
    import time

    from tasks.synth import write_synth_shard

    write_synth_shard(str(tmp_path / "c"), seed=5, size=96, start=0, stop=60, annotated=0)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MANGAKA_"))}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    args = ["ingest-images", "c/images", "--size", "64", "--shard-size", "4"]

    def digest(ws: Path) -> dict[str, str]:
        return {
            str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((ws / "corpus").rglob("*"))
            if p.is_file()
        }

    proc = subprocess.Popen(
        [*MANGAKA, "--workspace", "killed", *args],
        cwd=tmp_path,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    markers = tmp_path / "killed" / "_meta" / "markers" / "corpus" / "images"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (markers.exists() and any(markers.iterdir())):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(markers.iterdir()))
    assert 0 < done_at_kill < 15, done_at_kill  # killed mid-run

    r = subprocess.run(
        [*MANGAKA, "--workspace", "killed", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [*MANGAKA, "--workspace", "whole", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr
    assert digest(tmp_path / "killed") == digest(tmp_path / "whole")


def test_gaugan_commands_end_to_end(tmp_path: Path) -> None:
    """train-gaugan (then more steps: it resumes and says so), generate, eval-gaugan, status."""
    from tasks.segment import TrainOptions, train_unet
    from tasks.synth import draw_portrait
    from tests.tasks.test_segment import tiny_workspace

    ws = tiny_workspace(tmp_path / "ws", n=8)
    train_unet(ws, TrainOptions(epochs=1, batch_size=4, val_fraction=0.3))
    small = ["--size", "64", "--ngf", "4", "--ndf", "8", "--spade-hidden", "8", "--batch-size", "2"]
    small += ["--vae-steps", "2", "--checkpoint-every", "2", "--lambda-vgg", "0", "--eval-count", "4"]
    base = ["--workspace", "ws", "--device", "cpu"]
    r = run([*base, "train-gaugan", *small, "--steps", "2"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "trained GauGAN to step 2" in r.stdout and "resumed" not in r.stdout
    r = run([*base, "train-gaugan", *small, "--steps", "4"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resumed run" in r.stdout and "at gan step 2" in r.stdout and "to step 4" in r.stdout
    r = run([*base, "train-gaugan", *small, "--steps", "4"], tmp_path)
    assert r.returncode == 0 and "nothing to do" in r.stdout

    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(2):
        Image.fromarray(draw_portrait(4, i, 80).mask).save(masks / f"x{i}.png")
    r = run([*base, "generate", "out", "--masks", "masks", "--seed", "7"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x0.png", "x1.png"]
    assert Image.open(tmp_path / "out" / "x0.png").size == (64, 64)
    r = run([*base, "generate", "out", "--masks", "masks", "--attribute", "hair"], tmp_path)
    assert r.returncode == 2 and "NAME=VALUE" in r.stderr

    r = run([*base, "eval-gaugan", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert 0 <= ev["semantic_miou"] <= 1 and 0 <= ev["real"]["pixel_accuracy"] <= 1 and ev["images"] >= 1
    r = run([*base, "status", "--json"], tmp_path)
    status = json.loads(r.stdout)
    assert status["stages"]["gaugan"]["done"] == 1 and status["stages"]["gaugan"]["step"] == 4
    assert status["stages"]["generated/images"] == {"done": 2, "total": 2}


def test_lineart_commands_end_to_end(cluster: str, tmp_path: Path) -> None:
    """synth -> ingest-images -> train-lineart -> render-lineart with each method -> status."""
    from tasks.synth import write_synth_shard

    write_synth_shard(str(tmp_path / "c"), seed=8, size=64, start=0, stop=10, annotated=0)
    base = ["--dask-address", cluster, "--workspace", "ws", "--device", "cpu"]
    assert run([*base, "ingest-images", "c/images", "--size", "64"], tmp_path).returncode == 0
    r = run([*base, "render-lineart", "--method", "artline"], tmp_path)
    assert r.returncode == 2 and "train it first" in r.stderr
    for method in ("canny", "xdog"):
        r = run([*base, "render-lineart", "--method", method], tmp_path)
        assert r.returncode == 0, r.stderr
        assert f"rendered 10 corpus images with {method}" in r.stdout
    train = [*base, "train-lineart", "--size", "32", "--epochs", "2", "--count", "8", "--batch-size", "4"]
    r = run([*train, "--holdout", "tone"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "trained the line-art model 2 epochs" in r.stdout and "held-out boundary F1" in r.stdout
    assert "on style family tone" in r.stdout and "same images: xdog" in r.stdout
    r = run([*train, "--holdout", "tone"], tmp_path)
    assert r.returncode == 0 and "nothing to do" in r.stdout
    r = run([*base, "render-lineart", "--method", "artline"], tmp_path)
    assert r.returncode == 0, r.stderr
    status = json.loads(run([*base, "status", "--json"], tmp_path).stdout)
    for method in ("canny", "xdog", "artline"):
        assert status["stages"][f"corpus/lineart/{method}"] == {"done": 10, "total": 10}
    assert status["stages"]["artline"]["done"] == 1
    assert status["stages"]["artline"]["holdout"] == "tone" and 0 <= status["stages"]["artline"]["xdog_f1"] <= 1
    text = run([*base, "status"], tmp_path).stdout
    assert "on style family tone (never trained on); same images: xdog" in text

    tune = [*train, "--holdout", "tone", "--finetune", "--finetune-epochs", "1"]
    r = run(tune, tmp_path)
    assert r.returncode == 2 and "needs at least 2" in r.stderr and "ingest-labelme" in r.stderr
    write_synth_shard(str(tmp_path / "a"), seed=9, size=64, start=0, stop=6, annotated=6)
    assert run([*base, "ingest-labelme", "a/labelme"], tmp_path).returncode == 0
    r = run(tune, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fine-tuned the line-art model 1 epochs on the annotated images, from" in r.stdout
    assert "on held-out annotated images" in r.stdout and "before fine-tuning" in r.stdout
    r = run([*base, "render-lineart", "--method", "artline"], tmp_path)
    assert r.returncode == 0 and "rendered 10 corpus images with artline" in r.stdout, r.stdout
    text = run([*base, "status"], tmp_path).stdout
    assert "on held-out annotated images (region boundaries as truth); same images: xdog" in text


def test_style_commands_end_to_end(cluster: str, tmp_path: Path) -> None:
    """stylize one image; train-colorizer --json; render-style npr, fast and colorize; status."""
    from tasks.synth import draw_portrait, write_synth_shard

    Image.fromarray(draw_portrait(3, 0, 64).image).save(tmp_path / "content.png")
    Image.fromarray(draw_portrait(3, 1, 64).image).save(tmp_path / "style.png")
    r = run(
        ["stylize", "content.png", "style.png", "out/s.png", "--max-num-epochs", "3", "--max-long-edge", "32"], tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert "in 3 epochs" in r.stdout and Image.open(tmp_path / "out" / "s.png").size == (32, 32)
    r = run(["stylize", "missing.png", "style.png", "out/s.png"], tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr

    write_synth_shard(str(tmp_path / "c"), seed=9, size=32, start=0, stop=10, annotated=0)
    base = ["--dask-address", cluster, "--workspace", "ws", "--device", "cpu"]
    assert run([*base, "ingest-images", "c/images", "--size", "32"], tmp_path).returncode == 0
    r = run([*base, "train-colorizer", "--size", "32", "--epochs", "1", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert 0 <= json.loads(r.stdout)["palette_accuracy"] <= 1
    for args in (
        ["--method", "npr", "--name", "pencil", "--style", "pencil"],
        ["--method", "colorize", "--name", "colour"],
        ["--method", "fast", "--name", "fast", "--style-image", "style.png", "--fast-size", "32", "--fast-steps", "2"],
    ):
        r = run([*base, "render-style", *args], tmp_path)
        assert r.returncode == 0, r.stderr
        assert "rendered 10 corpus images" in r.stdout
    r = run([*base, "render-style", "--method", "fast", "--name", "x"], tmp_path)
    assert r.returncode == 2 and "--style-image" in r.stderr
    status = json.loads(run([*base, "status", "--json"], tmp_path).stdout)
    for name in ("pencil", "colour", "fast"):
        assert status["stages"][f"corpus/styled/{name}"] == {"done": 10, "total": 10}


def test_build_says_each_stage_in_a_log(cluster: str, tmp_path: Path) -> None:
    """Output to a file or pipe (no terminal, no bars) still shows a line per stage as it runs."""
    from tasks.synth import write_synth_shard

    write_synth_shard(str(tmp_path / "c"), seed=12, size=32, start=0, stop=6, annotated=0)
    base = ["--dask-address", cluster, "--workspace", "ws", "--device", "cpu"]
    stages = "ingest-labelme,ingest-images,render-lineart"
    r = run([*base, "build", "--src", "c/images", "--size", "32", "--stages", stages, "--no-report"], tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [line.split(" ", 1)[1] for line in r.stderr.splitlines() if " stage " in f" {line}"]
    assert lines[0] == "stage 1/3 ingest-labelme: skipped (no labelme folder given, nothing new to ingest)", lines
    assert lines[1] == "stage 2/3 ingest-images ..." and lines[2].startswith("stage 2/3 ingest-images: done in ")
    assert lines[3] == "stage 3/3 render-lineart ..." and lines[4].startswith("stage 3/3 render-lineart: done in ")
