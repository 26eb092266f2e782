"""ingest-labelme on the real Prefect engine and Dask cluster."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.labelme import ingest_labelme
from storage.items import item_table
from storage.workspace import Workspace, WorkspaceError
from tasks.annotations import LabelmeOptions
from tasks.synth import write_synth_shard

SIZE = 96


@pytest.fixture()
def annotations(tmp_path: Path) -> Path:
    write_synth_shard(str(tmp_path / "synth"), seed=6, size=SIZE, start=0, stop=10, annotated=10)
    folder = tmp_path / "synth" / "labelme"
    (folder / "broken.json").write_text("{not json")
    good = json.loads((folder / "s6-000000.json").read_text())
    unknown = {**good, "shapes": [*good["shapes"], {**good["shapes"][0], "label": "tail"}]}
    (folder / "unknown.json").write_text(json.dumps(unknown))
    (folder / "lost.json").write_text(json.dumps({**good, "imagePath": "lost.jpg"}))
    return folder


def ingest(ws: Path, folder: Path, **opts: object) -> dict:
    return ingest_labelme(workspace=str(ws), src=str(folder), options=LabelmeOptions(size=SIZE, **opts), shard_size=4)


def test_annotations_land_exactly_and_bad_files_are_quarantined(
    cluster: str, annotations: Path, tmp_path: Path
) -> None:
    r = ingest(tmp_path / "ws", annotations)
    assert (r["stored"], r["quarantined"]) == (10, 3)
    ws = Workspace(str(tmp_path / "ws"))
    reasons = {Path(e["source"]).name: e["reason"] for e in ws.quarantine_entries()}
    assert "invalid JSON" in reasons["broken.json"] and "unknown label 'tail'" in reasons["unknown.json"]
    assert "missing image" in reasons["lost.json"]
    table = item_table(ws, "annotated")
    masks, images = ws.array("annotated/masks"), ws.array("annotated/images")
    truth_dir = annotations.parent / "truth"
    for item, entry in table.by_id.items():
        truth = np.asarray(Image.open(truth_dir / f"{item}.png"))
        assert (masks[entry["slot"]] == truth).all()
        assert images[entry["slot"]].shape == (SIZE, SIZE, 3) and images[entry["slot"]].std() > 10
    assert ws.classes == ["background", "skin", "face", "eye", "mouth", "hair", "clothes"]

    # a corrected file, saved elsewhere, replaces the item with the same id
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    shutil.copy(annotations / "s6-000003.jpg", fixed)
    d = json.loads((annotations / "s6-000003.json").read_text())
    d["shapes"] = [{**s, "label": "clothes"} if s["label"] == "hair" else s for s in d["shapes"]]
    (fixed / "s6-000003.json").write_text(json.dumps(d))
    r = ingest(tmp_path / "ws", fixed)
    assert (r["stored"], r["replaced"], r["annotated_items"]) == (1, 1, 10)
    table = item_table(ws, "annotated")
    mask = ws.array("annotated/masks")[table.by_id["s6-000003"]["slot"]]
    assert (mask == 5).sum() == 0 and (mask == 6).sum() > 0

    # a workspace keeps its class list
    with pytest.raises(WorkspaceError, match="--labels"):
        ingest(tmp_path / "ws", fixed, classes=("background", "cat"))
