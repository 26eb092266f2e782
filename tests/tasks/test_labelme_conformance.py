"""labelme's own examples: our reader's class map must match labelme2voc's output."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tasks.labelme import class_ids, parse_labels, read_annotation

ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "labelme"
CASES = sorted(ROOT.glob("*/data_annotated/*.json"))


def test_conformance_cases_are_present() -> None:
    if not CASES and not os.environ.get("CI"):
        pytest.skip("../shared/conformance/labelme is not beside this checkout")
    assert len(CASES) >= 8


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_class_map_matches_labelme_reference(path: Path) -> None:
    case = path.parent.parent
    ids = class_ids(parse_labels((case / "labels.txt").read_text()))
    ann = read_annotation(path.read_bytes(), str(path), str(path.parent), ids)
    ours = ann.mask.astype(np.int32)
    ours[ours == 255] = -1
    ref = np.load(case / "reference" / f"{path.stem}.npz")["label"]
    assert ours.shape == ref.shape and ann.image.shape[:2] == ref.shape
    assert (ours == ref).mean() >= 0.9999
