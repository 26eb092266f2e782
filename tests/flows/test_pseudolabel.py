"""pseudolabel on the real Prefect engine and Dask cluster: markers keyed by the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from flows.ingest import ingest_images
from flows.pseudolabel import pseudolabel
from storage.items import item_table
from tasks.ingest import IngestOptions
from tasks.pseudolabel import miou_against, pick_engine
from tasks.segment import TrainOptions, train_unet
from tasks.synth import write_synth_shard
from tests.tasks.test_segment import tiny_workspace


def test_pseudolabels_follow_the_model(cluster: str, tmp_path: Path) -> None:
    ws = tiny_workspace(tmp_path / "ws")
    train_unet(ws, TrainOptions(epochs=2, batch_size=4, val_fraction=0.34))
    write_synth_shard(str(tmp_path / "c"), seed=12, size=64, start=0, stop=12, annotated=0)
    ingest_images(workspace=ws.url, src=str(tmp_path / "c" / "images"), options=IngestOptions(size=64))
    r = pseudolabel(workspace=ws.url)
    assert (r["labelled"], r["shards"]) == (12, 2) and r["checkpoint"].endswith("-epoch-0002")
    first = r["checkpoint"].replace("-epoch-0002", "-epoch-0001")
    table = item_table(ws, "corpus")
    masks, conf = ws.array("corpus/masks"), ws.array("corpus/confidence")
    for e in table.by_id.values():
        assert masks[e["slot"]].max() < 7 and 1 / 7 <= float(conf[e["slot"]]) <= 1
    assert pseudolabel(workspace=ws.url)["shards"] == 0  # same model: nothing to do
    assert pseudolabel(workspace=ws.url, shards="1:2", force=True)["shards"] == 1
    auto = ws.array("corpus/masks")[:]
    # the other engine is another producer: it relabels, and agrees with the first but for near-ties
    other = "torch" if pick_engine("auto", "auto", "auto")[0] == "onnxruntime" else "onnxruntime"
    assert pseudolabel(workspace=ws.url, options={"engine": other, "batch_size": 2})["shards"] == 2
    assert (ws.array("corpus/masks")[:] == auto).mean() > 0.99
    # more reader threads (batches of 2: several reads in flight) change nothing
    one_reader = ws.array("corpus/masks")[:]
    many = {"engine": other, "readers": 3, "batch_size": 2}
    assert pseudolabel(workspace=ws.url, options=many, force=True)["shards"] == 2
    assert (ws.array("corpus/masks")[:] == one_reader).all()
    assert pseudolabel(workspace=ws.url, options={"model": first})["shards"] == 2  # other model
    r = pseudolabel(workspace=ws.url, options={"confidence_map": True})
    assert r["shards"] == 2
    e = next(iter(table.by_id.values()))
    per_pixel = ws.array("corpus/confidence_map")[e["slot"]]
    assert abs(per_pixel.mean() / 255 - float(ws.array("corpus/confidence")[e["slot"]])) < 0.01
    truth_dir = tmp_path / "c" / "truth"
    truth = {p.stem: np.asarray(Image.open(p)) for p in truth_dir.glob("*.png")}
    m = miou_against(ws, truth, ws.classes)
    assert m["images"] == 12 and 0 <= m["miou"] <= 1


def test_active_learning_loop_round_trips(cluster: str, tmp_path: Path) -> None:
    """export-labelme the least confident pseudo-labels, ingest them back as annotations."""
    from flows.export import export_labelme
    from flows.labelme import ingest_labelme
    from tasks.annotations import LabelmeOptions

    ws = tiny_workspace(tmp_path / "ws")
    train_unet(ws, TrainOptions(epochs=1, batch_size=4, val_fraction=0.34))
    write_synth_shard(str(tmp_path / "c"), seed=13, size=64, start=0, stop=10, annotated=0)
    ingest_images(workspace=ws.url, src=str(tmp_path / "c" / "images"), options=IngestOptions(size=64))
    pseudolabel(workspace=ws.url)
    out = tmp_path / "to-correct"
    r = export_labelme(workspace=ws.url, out=str(out), lowest_confidence=3)
    assert r["exported"] == 3 and len(list(out.glob("*.json"))) == 3 and len(list(out.glob("*.png"))) == 3
    corpus = item_table(ws, "corpus")
    conf = ws.array("corpus/confidence")[:]
    lowest = sorted(corpus.by_id, key=lambda i: float(conf[corpus.by_id[i]["slot"]]))[:3]
    assert sorted(p.stem for p in out.glob("*.json")) == sorted(lowest)
    r = ingest_labelme(workspace=ws.url, src=str(out), options=LabelmeOptions(size=64))
    assert (r["stored"], r["quarantined"]) == (3, 0)
    annotated = item_table(ws, "annotated")
    for item in lowest:
        back = ws.array("annotated/masks")[annotated.by_id[item]["slot"]]
        assert (back == ws.array("corpus/masks")[corpus.by_id[item]["slot"]]).all()


def test_gpu_workers_are_counted_from_the_cluster(cluster: str) -> None:
    from flows.runtime import gpu_workers

    assert gpu_workers() == 0  # the test cluster's workers advertise no GPU


def test_pseudolabel_tasks_run_on_gpu_workers(cluster: str, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    """A LocalCluster of 2 processes, one with a (fake) GPU: GPU tasks land only on that one."""
    from distributed import Client, get_task_stream

    from flows.runtime import DASK_ADDRESS_ENV, gpu_workers, local_cluster

    ws = tiny_workspace(tmp_path / "ws")
    train_unet(ws, TrainOptions(epochs=1, batch_size=4, val_fraction=0.34))
    write_synth_shard(str(tmp_path / "c"), seed=14, size=64, start=0, stop=24, annotated=0)
    src = str(tmp_path / "c" / "images")
    ingest_images(workspace=ws.url, src=src, options=IngestOptions(size=64))
    with local_cluster(n_workers=2, gpus=1) as two, Client(two.scheduler_address) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        gpu = [a for a, w in workers.items() if w.get("resources", {}).get("GPU")]
        assert len(workers) == 2 and len(gpu) == 1
        # workers run without Dask's stack profiler and without its malloc trim threshold
        seen = client.run(lambda: (_dask_setting("distributed.worker.profile.enabled"), _malloc_trim()))
        assert set(seen.values()) == {(False, None)}, seen
        monkeypatch.setenv(DASK_ADDRESS_ENV, two.scheduler_address)
        assert gpu_workers() == 1
        with get_task_stream(client) as stream:
            r = pseudolabel(workspace=ws.url)
    assert r["labelled"] == 24 and r["shards"] == 3
    ran_on = {t["worker"] for t in stream.data}
    assert len(stream.data) >= 3 and ran_on == set(gpu), ran_on
    # and they carry the Prefect tag that the `gpu` concurrency limit (serve --gpu-limit) counts
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="pseudolabel-shard")),
            sort=TaskRunSort.EXPECTED_START_TIME_DESC,
            limit=3,
        )
    assert len(runs) == 3 and all("gpu" in t.tags for t in runs), [t.tags for t in runs]


def _dask_setting(key: str) -> object:
    import dask

    return dask.config.get(key)


def _malloc_trim() -> str | None:
    import os

    return os.environ.get("MALLOC_TRIM_THRESHOLD_")
