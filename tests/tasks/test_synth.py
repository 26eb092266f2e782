"""The synthetic portraits: deterministic, varied, and with exact labelme truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from storage.workspace import DEFAULT_CLASSES
from tasks.labelme import shapes_to_mask
from tasks.synth import draw_portrait, portrait_id, write_synth_shard

CLASS_IDS = {n: i for i, n in enumerate(DEFAULT_CLASSES)}


def test_same_seed_and_index_draw_identical_portraits() -> None:
    a, b = draw_portrait(3, 5, 96), draw_portrait(3, 5, 96)
    assert (a.image == b.image).all() and (a.mask == b.mask).all() and (a.lines == b.lines).all()
    assert a.shapes == b.shapes
    c = draw_portrait(3, 6, 96)
    assert not (a.image == c.image).all()


def test_contract_shapes_dtypes_and_classes() -> None:
    p = draw_portrait(0, 1, 128)
    assert p.image.shape == (128, 128, 3) and p.image.dtype == np.uint8
    assert p.mask.shape == (128, 128) and p.lines.shape == (128, 128)
    assert set(np.unique(p.mask)) <= set(range(len(DEFAULT_CLASSES)))
    assert (p.lines < 128).mean() > 0.01 and (p.lines > 250).mean() > 0.5  # ink on paper


def test_every_class_appears_and_portraits_vary() -> None:
    portraits = [draw_portrait(0, i, 128) for i in range(12)]
    seen = np.zeros(len(DEFAULT_CLASSES), int)
    for p in portraits:
        seen[np.unique(p.mask)] += 1
    assert (seen >= 10).all(), seen  # every class in (nearly) every portrait
    hair = [p.image[p.mask == CLASS_IDS["hair"]].mean(axis=0) for p in portraits]
    assert np.std(np.array(hair), axis=0).mean() > 20  # hair colours differ
    fractions = [(p.mask == CLASS_IDS["face"]).mean() for p in portraits]
    assert max(fractions) > 1.5 * min(fractions)  # scale varies
    assert min((p.mask == CLASS_IDS["eye"]).sum() for p in portraits) > 10


def test_labelme_files_rasterise_to_the_truth_mask(tmp_path: Path) -> None:
    write_synth_shard(str(tmp_path), seed=1, size=160, start=0, stop=8, annotated=5)
    for i in range(8):
        pid = portrait_id(1, i)
        truth = np.asarray(Image.open(tmp_path / "truth" / f"{pid}.png"))
        assert (tmp_path / "lines" / f"{pid}.png").exists()
        if i < 5:
            doc = json.loads((tmp_path / "labelme" / f"{pid}.json").read_text())
            assert doc["imagePath"] == f"{pid}.jpg" and (tmp_path / "labelme" / doc["imagePath"]).exists()
            mask = shapes_to_mask(doc["shapes"], doc["imageHeight"], doc["imageWidth"], CLASS_IDS)
            assert (mask == truth).all()
        else:
            assert (tmp_path / "images" / f"{pid}.jpg").exists()
            assert not (tmp_path / "labelme" / f"{pid}.json").exists()
