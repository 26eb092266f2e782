"""Untrusted input: the workspace (nothing in it is unpickled, model configs are validated) and
the corpus (no file that is not a regular file is opened, no read is unbounded, archive member
names must be journalled, compressed tars are a usage error, images open through one door)."""

from __future__ import annotations

import ast
import bz2
import gzip
import io
import json
import lzma
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from storage.checkpoints import load_checkpoint, save_checkpoint
from storage.sources import CompressedTar, NotRegularFile, SourceReader, SourceRef, list_sources, read_regular_file
from storage.workspace import Workspace, WorkspaceError

ROOT = Path(__file__).resolve().parents[2]


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def _name(call: ast.Call) -> str:
    f = call.func
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


def test_no_code_path_unpickles_anything() -> None:
    """Every load in the package is pickle-free: torch.load only with weights_only=True."""
    offenders = []
    for path in sorted(p for pkg in ("flows", "tasks", "models", "storage") for p in (ROOT / pkg).rglob("*.py")):
        for call in _calls(ast.parse(path.read_text(), str(path))):
            name = _name(call)
            kwargs = {k.arg: k.value for k in call.keywords}
            if name in (
                "pickle.load",
                "pickle.loads",
                "cloudpickle.load",
                "cloudpickle.loads",
                "dill.load",
                "joblib.load",
            ):
                offenders.append(f"{path}:{call.lineno} {name}")
            if name == "torch.load":
                w = kwargs.get("weights_only")
                if not (isinstance(w, ast.Constant) and w.value is True):
                    offenders.append(f"{path}:{call.lineno} torch.load without weights_only=True")
            if name in ("np.load", "numpy.load"):
                a = kwargs.get("allow_pickle")
                if a is not None and not (isinstance(a, ast.Constant) and a.value is False):
                    offenders.append(f"{path}:{call.lineno} np.load with allow_pickle")
            if name == "yaml.load":
                offenders.append(f"{path}:{call.lineno} yaml.load (use safe_load)")
    assert offenders == []


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ({"model": "../../elsewhere"}, "not a model name"),
        ({"model": "unet-mobilenetv2-small", "num_classes": "seven"}, "num_classes"),
        ({"model": "unet-mobilenetv2-small", "num_classes": 10**9}, "num_classes"),
        ({"model": "unet-mobilenetv2-small", "options": ["x"]}, "options"),
    ],
)
def test_tampered_model_configs_are_refused(tmp_path: Path, config: dict, why: str) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    save_checkpoint(ws, "unet", "run-1", b"", config)
    with pytest.raises(WorkspaceError, match=why):
        load_checkpoint(ws, "unet")


def test_a_config_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    ws = Workspace(str(tmp_path / "ws"))
    save_checkpoint(ws, "unet", "run-1", b"", {"model": "x"})
    ws.loc.write_bytes("models/unet/run-1/config.json", b"[1, 2]")
    with pytest.raises(WorkspaceError, match="not a JSON object"):
        load_checkpoint(ws, "unet")
    ws.loc.write_bytes("models/unet/run-1/config.json", b"{not json")
    with pytest.raises(WorkspaceError, match="invalid config"):
        load_checkpoint(ws, "unet")


def test_a_tampered_gaugan_options_block_is_refused(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from tasks.generate import load_gaugan

    ws = Workspace(str(tmp_path / "ws"))
    save_checkpoint(ws, "gaugan", "run-1", b"", {"phase": "gan", "num_classes": 7, "options": {"ngf": -3}})
    with pytest.raises(ValidationError):
        load_gaugan(ws)


# -- corpus files and archives: hostile inputs found by the audit (issue 18, items 9-13) ------------
def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@pytest.mark.timeout(60)
def test_a_fifo_corpus_file_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO where a listed file was (or any non-regular file): refused at once, a ValueError
    that read_source turns into a quarantine entry; before, open() blocked forever."""
    from tasks.ingest import Unusable, read_source

    fifo = _fifo(tmp_path / "late.jpg")
    ref = SourceRef(str(fifo), "file", str(fifo), "late.jpg", 1000, 0.0)
    with SourceReader() as reader:
        with pytest.raises(NotRegularFile, match="FIFO"):
            reader.read(ref, limit=10_000)
        with pytest.raises(Unusable, match="refused: not a regular file"):
            read_source(reader, ref, 10_000)
    with pytest.raises(NotRegularFile, match="character device"):
        read_regular_file("/dev/zero", 10)  # would never end without a limit
    with pytest.raises(NotRegularFile, match="folder"):
        read_regular_file(str(tmp_path), 10)


def test_every_read_is_bounded_even_if_the_file_grew_since_listing(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 100)
    listed_small = SourceRef(str(path), "file", str(path), "a.jpg", 5, 0.0)
    with SourceReader() as reader, pytest.raises(ValueError, match="over the 10-byte limit"):
        reader.read(listed_small, limit=10)
    assert read_regular_file(str(path), 100) == b"x" * 100
    assert read_regular_file(str(path), None) == b"x" * 100
    with pytest.raises(ValueError, match="100 bytes, over the 99-byte limit"):
        read_regular_file(str(path), 99)


def test_listing_still_skips_non_regular_entries(tmp_path: Path) -> None:
    (tmp_path / "ok.png").write_bytes(b"png")
    _fifo(tmp_path / "pipe.jpg")
    listing = list_sources(str(tmp_path))
    assert [r.relpath for r in listing.refs] == ["ok.png"] and listing.refused == []


def _tar_with_names(archive: Path, names: list[str]) -> Path:
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tf:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 3
            tf.addfile(info, io.BytesIO(b"abc"))
    return archive


def test_a_tar_member_whose_name_is_not_utf8_is_refused_and_its_neighbours_listed(tmp_path: Path) -> None:
    bad = b"caf\xe9.jpg".decode("utf-8", "surrogateescape")  # latin-1 bytes in the header
    archive = _tar_with_names(tmp_path / "c.tar", ["a.jpg", bad, "b.png"])
    listing = list_sources(str(archive))
    assert [r.relpath for r in listing.refs] == ["a.jpg", "b.png"]
    assert listing.refused == [(f"{archive}::caf\\udce9.jpg", "file name is not valid UTF-8: rename it")]
    json.dumps([r.to_dict() for r in listing.refs] + listing.refused)  # all of it can be journalled
    with SourceReader() as reader:
        assert [reader.read(r, limit=10) for r in listing.refs] == [b"abc", b"abc"]


@pytest.mark.parametrize(
    ("name", "compress", "what", "tool"),
    [
        ("c.tar.gz", gzip.compress, "a gzip-compressed tar", "gunzip"),
        ("c.tgz", gzip.compress, "a gzip-compressed tar", "gunzip"),
        ("c.tar.bz2", bz2.compress, "a bzip2-compressed tar", "bunzip2"),
        ("c.tar.xz", lzma.compress, "an xz-compressed tar", "unxz"),
        ("misnamed.tar", gzip.compress, "a gzip-compressed tar", "gunzip"),  # magic bytes, not the name
    ],
)
def test_compressed_tars_are_refused_as_a_usage_error(
    tmp_path: Path, name: str, compress: Callable[[bytes], bytes], what: str, tool: str
) -> None:
    plain = _tar_with_names(tmp_path / "plain.tar", ["a.jpg"]).read_bytes()
    (tmp_path / name).write_bytes(compress(plain))
    with pytest.raises(CompressedTar, match=f"{what}.*uncompressed .tar; decompress it first \\({tool}\\)") as info:
        list_sources(str(tmp_path / name))
    assert isinstance(info.value, WorkspaceError) and isinstance(info.value, ValueError)  # the CLI exits 2


def test_a_plain_tar_whose_first_name_looks_like_a_magic_number_is_read(tmp_path: Path) -> None:
    archive = _tar_with_names(tmp_path / "bz.tar", ["BZh91AY&SY.jpg", "b.jpg"])
    assert archive.read_bytes().startswith(b"BZh9")
    assert len(list_sources(str(archive)).refs) == 2
    archive = _tar_with_names(tmp_path / "gz.tar", ["\x1f\udc8b.jpg", "b.jpg"])  # bytes 1f 8b: not UTF-8
    assert archive.read_bytes().startswith(b"\x1f\x8b")
    listing = list_sources(str(archive))
    assert len(listing.refs) == 1 and len(listing.refused) == 1


def test_untrusted_image_bytes_are_opened_only_by_open_image() -> None:
    """One door: Image.open (any format, Pillow's limit only) is called in tasks/imageio.py alone."""
    offenders = []
    for path in sorted(p for pkg in ("flows", "tasks", "models", "storage") for p in (ROOT / pkg).rglob("*.py")):
        for call in _calls(ast.parse(path.read_text(), str(path))):
            if _name(call) in ("Image.open", "PIL.Image.open") and path != ROOT / "tasks" / "imageio.py":
                offenders.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert offenders == []
    src = (ROOT / "tasks" / "imageio.py").read_text()
    assert "MAX_IMAGE_PIXELS = None" not in src
