"""ingest-images into JPEG workspaces (the default) and raw ones: what is kept byte for byte,
what is encoded once, what is quarantined, and that the codec is fixed per workspace."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from flows.ingest import ingest_images
from storage.workspace import Workspace, WorkspaceError
from tasks.imageio import load_square
from tasks.ingest import IngestOptions
from tests.conftest import jpeg_bytes, png_bytes, rotated_jpeg

S = 64


def picture(seed: int, h: int = S, w: int = S) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 120, 3)
    return np.clip(base + x[..., None] * (100 / w) + y[..., None] * (80 / h), 0, 255).astype(np.uint8)


KEPT = {"colour.jpg": lambda: jpeg_bytes(picture(1)), "grey.jpg": lambda: jpeg_bytes(picture(2)[..., 0])}
ENCODED = {
    "flat.png": lambda: png_bytes(Image.fromarray(picture(3))),
    "progressive.jpg": lambda: jpeg_bytes(picture(4), progressive=True),
    "large.jpg": lambda: jpeg_bytes(picture(5, 2 * S, 3 * S)),
    "rotated.jpg": lambda: rotated_jpeg(picture(6), 3),
}
# a header that passes every check, then a scan that stops in the middle
BROKEN = {"cut.jpg": lambda: jpeg_bytes(picture(7))[:-300]}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("mixed")
    for name, make in {**KEPT, **ENCODED, **BROKEN}.items():
        (src / name).write_bytes(make())
    return src


def ingest(ws: Path, src: Path, **options: object) -> dict:
    return ingest_images(workspace=str(ws), src=str(src), options=IngestOptions(size=S, **options), shard_size=4)


def entries(ws: Workspace) -> dict[str, dict]:
    got = {}
    for marker in ws.markers("corpus/images").values():
        got.update({Path(e["source"]).name: e for e in marker["entries"]})
    return got


def test_conforming_jpegs_are_kept_byte_for_byte_and_the_rest_encoded_once(
    cluster: str, mixed: Path, tmp_path: Path
) -> None:
    r = ingest(tmp_path / "ws", mixed)
    assert (r["stored"], r["stored_as_is"], r["quarantined"], r["codec"]) == (6, 2, 1, "jpeg")
    ws = Workspace(str(tmp_path / "ws"))
    assert ws.config()["codec"] == "jpeg" and ws.config()["jpeg_quality"] == 95
    (reason,) = [e["reason"] for e in ws.quarantine_entries()]
    assert "truncated" in reason
    seen = entries(ws)
    assert seen["cut.jpg"]["status"] == "quarantined"
    for name in KEPT:
        e = seen[name]
        assert (e["stored"], e["format"]) == ("as-is", "JPEG")
        (chunk,) = ws.read_chunks("corpus/images", [e["slot"]])
        source = (mixed / name).read_bytes()
        assert chunk == source
        (pixels,) = ws.read_items("corpus/images", [e["slot"]])
        assert (pixels == simplejpeg.decode_jpeg(source, "RGB")).all()
    for name, fmt in [("flat.png", "PNG"), ("progressive.jpg", "JPEG"), ("large.jpg", "JPEG"), ("rotated.jpg", "JPEG")]:
        e = seen[name]
        assert (e["stored"], e["format"]) == ("re-encoded", fmt)
        (chunk,) = ws.read_chunks("corpus/images", [e["slot"]])
        assert chunk is not None and chunk[:2] == b"\xff\xd8" and chunk != (mixed / name).read_bytes()
        (pixels,) = ws.read_items("corpus/images", [e["slot"]])
        want = load_square((mixed / name).read_bytes(), S)  # decoded, squared and rotated as in a raw workspace
        assert np.abs(pixels.astype(int) - want).mean() < 1.5, name
    # the codec is fixed: another one is refused, the same one (or none) is fine
    with pytest.raises(WorkspaceError, match="--codec jpeg"):
        ws.check_codec("raw", None)
    with pytest.raises(WorkspaceError, match="--jpeg-quality 95"):
        ws.check_codec("jpeg", 80)
    again = ingest(tmp_path / "ws", mixed)
    assert (again["stored"], again["already_ingested"]) == (0, 7)


def test_a_raw_workspace_is_lossless_and_a_workspace_from_before_codecs_stays_raw(
    cluster: str, mixed: Path, tmp_path: Path
) -> None:
    ws_path = tmp_path / "raw"
    r = ingest(ws_path, mixed, codec="raw")
    assert (r["stored"], r["stored_as_is"], r["codec"]) == (6, 0, "raw")
    ws = Workspace(str(ws_path))
    assert ws.codec_of("corpus/images") == "raw"
    seen = entries(ws)
    assert seen["colour.jpg"]["stored"] == "decoded"
    for name in [*KEPT, *ENCODED]:
        (pixels,) = ws.read_items("corpus/images", [seen[name]["slot"]])
        assert (pixels == load_square((mixed / name).read_bytes(), S)).all(), name

    # a workspace written before the codec was a setting: no codec recorded, a zstd corpus
    cfg_path = ws_path / "_meta" / "workspace.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["codec"], cfg["jpeg_quality"]
    cfg_path.write_text(json.dumps(cfg))
    assert ws.image_codec() == ("raw", 95)
    more = mixed.parent / "more"
    more.mkdir(exist_ok=True)
    (more / "extra.jpg").write_bytes(jpeg_bytes(picture(9)))
    r = ingest(ws_path, more)  # no --codec: the workspace's own
    assert (r["stored"], r["stored_as_is"], r["codec"]) == (1, 0, "raw")
    versions = {m["version"] for m in ws.markers("corpus/images").values()}
    assert len(versions) == 1  # the same producer version as before: nothing is redone
    with pytest.raises(WorkspaceError, match="--codec raw"):
        ingest(ws_path, more, codec="jpeg")
