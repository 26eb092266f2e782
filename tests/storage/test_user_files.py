"""A user's own files and folders (OUT, --masks, --style-image, labelme imagePath) through
storage, local and on S3 (moto on loopback)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import s3fs

from storage.location import Location, child_url, exists_dir, exists_file, file_url, split_url, url_name, write_file
from storage.sources import NotRegularFile, OutsideFolder, read_file, read_relative


def test_names_and_folders_of_paths_and_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    loc, name = split_url("out/s.png")
    assert (loc.url, name) == (str(tmp_path / "out"), "s.png")
    loc, name = split_url("s3://bucket/a/b/c.png")
    assert (loc.url, loc.root, name) == ("s3://bucket/a/b", "bucket/a/b", "c.png")
    assert loc.url_of(name) == "s3://bucket/a/b/c.png"
    with pytest.raises(ValueError, match="names no file"):
        split_url("s3://bucket")
    assert child_url("out", "m0.png") == "out/m0.png" == child_url("out/", "m0.png")
    assert child_url("s3://b/p/", "m0.png") == "s3://b/p/m0.png"
    with pytest.raises(ValueError, match="escapes"):
        child_url("out", "../m0.png")
    assert url_name("a/b.png") == url_name("s3://bucket/a/b.png") == "b.png"
    assert file_url("x/y.png") == f"file://{tmp_path}/x/y.png" and file_url("s3://b/y.png") == "s3://b/y.png"


def test_write_read_and_exists_locally(tmp_path: Path) -> None:
    target = str(tmp_path / "new" / "dir" / "f.bin")
    assert write_file(target, b"abc") == target
    assert read_file(target) == b"abc" and exists_file(target) and exists_dir(str(tmp_path / "new"))
    assert not exists_file(str(tmp_path / "new")) and not exists_dir(target)
    assert not exists_file(str(tmp_path / "missing")) and not exists_dir(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="over the 2-byte limit"):
        read_file(target, 2)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NotRegularFile):
        read_file(str(tmp_path / "fifo"))
    with pytest.raises(FileNotFoundError):
        read_file(str(tmp_path / "missing"))


def test_write_read_and_exists_on_s3(bucket: str, s3_server: str) -> None:
    url = f"s3://{bucket}/a/b/f.bin"
    write_file(url, b"abcd")
    assert s3fs.S3FileSystem(endpoint_url=s3_server).cat(f"{bucket}/a/b/f.bin") == b"abcd"
    assert read_file(url) == b"abcd" and exists_file(url)
    assert exists_dir(f"s3://{bucket}/a") and exists_dir(f"s3://{bucket}") and not exists_dir(url)
    assert not exists_file(f"s3://{bucket}/a") and not exists_file(f"s3://{bucket}/nope")
    assert not exists_dir(f"s3://{bucket}/nope")
    with pytest.raises(ValueError, match="over the 3-byte limit"):
        read_file(url, 3)
    with pytest.raises(FileNotFoundError):
        read_file(f"s3://{bucket}/nope")
    assert Location(f"s3://{bucket}/a").is_file("b/f.bin")


def test_relative_names_stay_inside_their_folder(tmp_path: Path, bucket: str, s3_server: str) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "img.png").write_bytes(b"img")
    (tmp_path / "secret.png").write_bytes(b"secret")
    os.symlink(tmp_path / "secret.png", root / "sub" / "link.png")
    base = str(root / "sub" / "a.json")
    assert read_relative(base, "../img.png", str(root)) == b"img"
    assert read_relative(base, "..\\img.png", str(root)) == b"img"
    for rel, absolute in (("../../secret.png", False), ("link.png", False), ("/etc/passwd", True)):
        with pytest.raises(OutsideFolder) as info:
            read_relative(base, rel, str(root))
        assert info.value.absolute is absolute

    fs = s3fs.S3FileSystem(endpoint_url=s3_server)
    fs.pipe(f"{bucket}/root/img.png", b"img")
    fs.pipe(f"{bucket}/secret.png", b"secret")
    s3_root = f"s3://{bucket}/root"
    for s3_base in (f"{bucket}/root/sub/a.json", f"s3://{bucket}/root/sub/a.json"):
        assert read_relative(s3_base, "../img.png", s3_root) == b"img"
        with pytest.raises(OutsideFolder):
            read_relative(s3_base, "../../secret.png", s3_root)
    with pytest.raises(ValueError, match="limit"):
        read_relative(f"{bucket}/root/a.json", "img.png", s3_root, limit=2)
