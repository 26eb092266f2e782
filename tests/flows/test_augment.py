"""augment on the real Prefect engine and Dask cluster."""

from __future__ import annotations

import json
from pathlib import Path

from flows.augment import augment
from flows.labelme import ingest_labelme
from storage.items import item_table
from storage.workspace import Workspace
from tasks.annotations import LabelmeOptions
from tasks.augment import AugmentOptions
from tasks.synth import write_synth_shard


def test_augment_multiplies_and_redoes_only_what_changed(cluster: str, tmp_path: Path) -> None:
    write_synth_shard(str(tmp_path / "s"), seed=8, size=64, start=0, stop=5, annotated=5)
    ws_url = str(tmp_path / "ws")
    ingest_labelme(
        workspace=ws_url,
        src=str(tmp_path / "s" / "labelme"),
        options=LabelmeOptions(size=64),
        shard_size=8,
    )
    opts = AugmentOptions(multiplier=4, seed=1)
    r = augment(workspace=ws_url, options=opts)
    assert (r["parents"], r["augmented_items"], r["variants_written"]) == (5, 20, 20)
    ws = Workspace(ws_url)
    table = item_table(ws, "augmented")
    parents = item_table(ws, "annotated")
    assert sorted(table.by_id) == sorted(f"{p}-a{k:02d}" for p in parents.by_id for k in range(4))
    first = table.by_id["s8-000002-a00"]
    assert first["parent"] == "s8-000002"
    src = parents.by_id["s8-000002"]["slot"]
    assert (ws.array("augmented/images")[first["slot"]] == ws.array("annotated/images")[src]).all()
    assert not (
        ws.array("augmented/masks")[table.by_id["s8-000002-a01"]["slot"]] == ws.array("annotated/masks")[src]
    ).all()

    again = augment(workspace=ws_url, options=opts)
    assert again["shards"] == 0

    # correct one annotation: only the shard holding its variants is redone
    d = json.loads((tmp_path / "s" / "labelme" / "s8-000004.json").read_text())
    d["shapes"] = d["shapes"][:-1]
    (tmp_path / "s" / "labelme" / "s8-000004.json").write_text(json.dumps(d))
    ingest_labelme(workspace=ws_url, src=str(tmp_path / "s" / "labelme"), options=LabelmeOptions(size=64))
    r = augment(workspace=ws_url, options=opts)
    assert r["shards"] == 1 and r["augmented_items"] == 20

    # another multiplier lays the array out anew
    r = augment(workspace=ws_url, options=AugmentOptions(multiplier=2))
    length = item_table(ws, "annotated").length
    assert r["augmented_items"] == 10 and ws.array("augmented/images").shape[0] == 2 * length


def test_a_multiplier_over_the_shard_size_fills_every_shard(cluster: str, tmp_path: Path) -> None:
    write_synth_shard(str(tmp_path / "s"), seed=9, size=32, start=0, stop=3, annotated=3)
    ws_url = str(tmp_path / "ws")
    ingest_labelme(workspace=ws_url, src=str(tmp_path / "s" / "labelme"), options=LabelmeOptions(size=32), shard_size=4)
    r = augment(workspace=ws_url, options=AugmentOptions(multiplier=10, seed=1))
    assert r["augmented_items"] == 30 and r["shards"] == 8  # 30 slots over shards 0..7, none skipped
    ws = Workspace(ws_url)
    assert sorted(ws.markers("augmented/images")) == list(range(8))
    images = ws.array("augmented/images")
    for i, e in item_table(ws, "augmented").by_id.items():  # every variant written, not left blank
        assert images[e["slot"]].any(), i
