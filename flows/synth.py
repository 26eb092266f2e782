"""The ``synth`` flow: draw a corpus of portraits with exact truth, shard by shard on Dask."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger

from flows import UsageError
from flows.ops import mangaka_flow, shard_task
from flows.shards import run_shards
from tasks.synth import write_synth_shard

SHARD = 64  # portraits per task: ~0.1-0.3 s each, so tasks last seconds, not milliseconds


@dataclass(frozen=True)
class SynthSpec:
    out: str
    seed: int
    size: int
    start: int
    stop: int
    annotated: int


@shard_task("synth-shard")
def synth_shard_task(spec: SynthSpec) -> int:
    return write_synth_shard(spec.out, spec.seed, spec.size, spec.start, spec.stop, spec.annotated)


@mangaka_flow("synth", "{count} portraits to {out}")
def synth(out: str, count: int, annotated: int = 0, size: int = 512, seed: int = 0) -> dict[str, int]:
    """Draw ``count`` portraits into ``out``; the first ``annotated`` get labelme files.

    Args:
        out: the folder (local or s3://) to draw into: labelme/, images/, truth/, lines/
        count: portraits to draw
        annotated: how many of them get labelme files (the rest are the unlabelled corpus)
        size: side of each portrait, pixels
        seed: the corpus's seed (same seed, same portraits)
    """
    if count < 0 or not 0 <= annotated <= count:
        raise UsageError(f"--annotated must be between 0 and --count ({count}), not {annotated}")
    specs = [SynthSpec(out, seed, size, i, min(i + SHARD, count), annotated) for i in range(0, count, SHARD)]
    drawn = sum(run_shards(synth_shard_task, specs, "synth"))
    get_run_logger().info("drew %d portraits (%d annotated) at %dpx into %s", drawn, annotated, size, out)
    return {"portraits": drawn, "annotated": annotated, "unlabelled": drawn - annotated}


def describe_synth(r: dict[str, Any], params: dict[str, Any]) -> str:
    return f"drew {r['portraits']} portraits into {params['out']} ({r['annotated']} annotated in labelme/)"
