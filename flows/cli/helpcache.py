"""A command's ``--help`` without importing its flow: the text, kept from the last time.

A command's options come from its flow's signature (:mod:`flows.cli.options`), so building
them imports the flow's module, and with it Prefect: about 3 s on a small machine, for a
page of text. The text is kept in the user's cache folder (``$MANGAKA_CACHE_DIR``, else
``$XDG_CACHE_HOME/mangaka``, else ``~/.cache/mangaka``) under a digest of everything it
depends on: the stamps (size, mtime) of every module of mangaka's packages, the versions
of Python and of the libraries that shape options, the terminal width, and the ``MANGAKA_``
environment (defaults may come from it). Any change to those makes another digest, and
the text is built anew. A cache that cannot be read or written is just not used.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("flows", "tasks", "models", "storage")
LIBRARIES = ("prefect", "pydantic")


def cache_dir() -> Path:
    if explicit := os.environ.get("MANGAKA_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mangaka"


def digest(command: str) -> str:
    from importlib import metadata

    h = hashlib.sha256(f"{command}\0{sys.version}\0{shutil.get_terminal_size().columns}\0".encode())
    for lib in LIBRARIES:
        try:
            h.update(f"{lib}={metadata.version(lib)}\0".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{lib}=none\0".encode())
    for k in sorted(os.environ):
        if k.startswith("MANGAKA_"):
            h.update(f"{k}={os.environ[k]}\0".encode())
    for package in PACKAGES:
        for dirpath, dirnames, filenames in os.walk(ROOT / package):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith(".py"):
                    st = os.stat(os.path.join(dirpath, name))
                    h.update(f"{os.path.relpath(dirpath, ROOT)}/{name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:32]


def _path(command: str) -> Path:
    return cache_dir() / f"help-{command}-{digest(command)}.txt"


def cached(command: str) -> str | None:
    try:
        return _path(command).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def keep(command: str, text: str) -> None:
    """Store ``text`` as ``command``'s help (atomically: a reader never sees half of it)."""
    try:
        path = _path(command)
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob(f"help-{command}-*.txt"):  # texts of other code or settings
            old.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
