"""S3 under faults: transient errors are retried to the exact result; a permanent one stops
the run with a clear message and a later run resumes; credentials never reach the output.

The command line runs as a user runs it, against moto's S3 server on loopback behind
:class:`tests.faults.FaultProxy`.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import s3fs

from tasks.synth import write_synth_shard
from tests.faults import FaultProxy
from tests.test_cli import MANGAKA

SECRET = "mangaka-test-secret-7f3a9c"  # noqa: S105 - a test credential that must never be printed


def _env(tmp_path: Path, endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MANGAKA_", "AWS_"))}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
        AWS_ACCESS_KEY_ID="mangaka-test-key",
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
        PREFECT_API_URL=os.environ["PREFECT_API_URL"],  # the session's server (cluster fixture)
    )
    return env


def _ingest(tmp_path: Path, ws: str, endpoint: str, **popen: object) -> subprocess.Popen[str]:
    args = ["-v", "--workspace", ws, "ingest-images", "c/images", "--size", "48", "--shard-size", "4"]
    return subprocess.Popen(
        [*MANGAKA, *args],
        cwd=tmp_path,
        env=_env(tmp_path, endpoint),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,  # type: ignore[call-overload]
    )


def _clean_run(
    tmp_path: Path, s3_server: str, bucket: str, seed: int, count: int
) -> tuple[s3fs.S3FileSystem, subprocess.Popen[str]]:
    """A corpus of ``count`` synthetic images in ``c/``, a client of the S3 server, and a
    fault-free ingestion of the corpus into ``s3://BUCKET/clean`` (started, not awaited)."""
    write_synth_shard(str(tmp_path / "c"), seed=seed, size=64, start=0, stop=count, annotated=0)
    fs = s3fs.S3FileSystem(endpoint_url=s3_server, key="k", secret="s")
    return fs, _ingest(tmp_path, f"s3://{bucket}/clean", s3_server)


def _objects(fs: s3fs.S3FileSystem, root: str) -> dict[str, bytes]:
    """Every data object of a workspace's corpus, by key (markers and journal are checked apart)."""
    keys = [k for k in fs.find(f"{root}/corpus") if "/.tmp-" not in k]
    return {k[len(root) :]: fs.cat_file(k) for k in keys}


def test_transient_s3_faults_are_retried_to_the_exact_result(
    cluster: str, s3_server: str, bucket: str, tmp_path: Path
) -> None:
    fs, clean = _clean_run(tmp_path, s3_server, bucket, seed=21, count=24)
    out, err = clean.communicate(timeout=600)
    assert clean.returncode == 0, err
    with FaultProxy(s3_server, rate=0.12, seed=4) as proxy:
        faulty = _ingest(tmp_path, f"s3://{bucket}/faulty", proxy.url)
        out2, err2 = faulty.communicate(timeout=600)
    assert faulty.returncode == 0, err2
    assert proxy.counts["503"] + proxy.counts["500"] + proxy.counts["dropped"] >= 5, proxy.counts
    reference = _objects(fs, f"{bucket}/clean")
    assert len(reference) > 6
    assert _objects(fs, f"{bucket}/faulty") == reference
    assert "ingested 24 new images" in out2
    for text in (out, err, out2, err2):
        assert SECRET not in text


def test_a_permanent_s3_fault_stops_the_run_clearly_and_a_later_run_resumes(
    cluster: str, s3_server: str, bucket: str, tmp_path: Path
) -> None:
    fs, clean = _clean_run(tmp_path, s3_server, bucket, seed=22, count=40)
    assert clean.wait(timeout=600) == 0
    markers = f"{bucket}/broken/_meta/markers/corpus/images"
    with FaultProxy(s3_server) as proxy:
        run = _ingest(tmp_path, f"s3://{bucket}/broken", proxy.url)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and run.poll() is None:
            fs.invalidate_cache()
            if fs.exists(markers) and fs.ls(markers):
                break
            time.sleep(0.05)
        proxy.permanent = True  # from now on every write is refused
        out, err = run.communicate(timeout=600)
        assert proxy.counts["403"] > 0, "the fault came after the run had finished"
    assert run.returncode == 1, (out, err)
    assert "AccessDenied" in err or "Access Denied" in err, err
    assert "run it again" in err, err
    fs.invalidate_cache()
    done = len(fs.ls(markers))
    assert 0 < done < 10, done

    again = _ingest(tmp_path, f"s3://{bucket}/broken", s3_server)
    out2, err2 = again.communicate(timeout=600)
    assert again.returncode == 0, err2
    assert _objects(fs, f"{bucket}/broken") == _objects(fs, f"{bucket}/clean")
    for text in (out, err, out2, err2):
        assert SECRET not in text
