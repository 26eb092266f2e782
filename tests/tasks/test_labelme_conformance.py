"""labelme's own examples: our rasterisation must match labelme2voc's output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tasks.labelme import shapes_to_mask

ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "labelme"
CASES = sorted(ROOT.glob("*/data_annotated/*.json"))


def test_conformance_cases_are_present() -> None:
    if not CASES and not os.environ.get("CI"):
        pytest.skip("../shared/conformance/labelme is not beside this checkout")
    assert len(CASES) >= 8


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_class_map_matches_labelme_reference(path: Path) -> None:
    case = path.parent.parent
    names = [n.strip() for n in (case / "labels.txt").read_text().splitlines() if n.strip()]
    assert names[:2] == ["__ignore__", "_background_"]
    ids = {"__ignore__": 255, "_background_": 0} | {n: i for i, n in enumerate(names[2:], start=1)}
    doc = json.loads(path.read_text())
    ours = shapes_to_mask(doc["shapes"], doc["imageHeight"], doc["imageWidth"], ids).astype(np.int32)
    ours[ours == 255] = -1
    ref = np.load(case / "reference" / f"{path.stem}.npz")["label"]
    assert ours.shape == ref.shape
    assert (ours == ref).mean() >= 0.9999
