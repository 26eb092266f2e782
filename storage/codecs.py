"""The image codec of a workspace: how its RGB image arrays store their items.

``jpeg`` (the default: one JPEG file per image, see ``storage.jpeg``) or ``raw`` (lossless:
the pixels compressed with zstd), recorded in ``_meta/workspace.json`` when the workspace
is created and fixed from then on. A mixin of :class:`storage.workspace.Workspace`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage.workspace import ArraySpec

DEFAULT_QUALITY = 95


def _error(message: str) -> Exception:
    from storage.workspace import WorkspaceError

    return WorkspaceError(message)


class ImageCodecs:
    """Codec settings and queries; needs the workspace's ``config``, ``update_config``,
    ``has_array``, ``array`` and ``url``."""

    url: str

    if TYPE_CHECKING:  # provided by Workspace

        def config(self) -> dict[str, Any]: ...
        def update_config(self, **values: Any) -> None: ...
        def has_array(self, array: str) -> bool: ...
        def array(self, array: str, mode: str = "r") -> Any: ...

    def image_codec(self) -> tuple[str, int]:
        """How this workspace stores RGB images: ``(codec, jpeg_quality)``.

        Recorded when the workspace is created; a workspace from before codecs were a
        setting is what its ``corpus/images`` is (``raw``), and a new one is ``jpeg``.
        """
        cfg = self.config()
        if "codec" in cfg:
            return str(cfg["codec"]), int(cfg.get("jpeg_quality", DEFAULT_QUALITY))
        if self.has_array("corpus/images"):
            from storage.shards import layout_of

            layout = layout_of(self.array("corpus/images"))
            if layout is not None and layout.codec == "jpeg":
                return "jpeg", layout.level
            return "raw", DEFAULT_QUALITY
        return "jpeg", DEFAULT_QUALITY

    def check_codec(self, codec: str | None, quality: int | None) -> tuple[str, int]:
        """The workspace's ``(codec, jpeg_quality)`` given what a command asks for (``None``:
        the workspace's); a :class:`WorkspaceError` if it asks for another one."""
        have, have_q = self.image_codec()
        fixed = "codec" in self.config() or self.has_array("corpus/images")
        if not fixed:
            return codec or have, quality or have_q
        if codec is not None and codec != have:
            raise _error(
                f"workspace {self.url} stores images with --codec {have}, not {codec}; "
                f"it is fixed when the workspace is created: use --codec {have} or a new workspace"
            )
        if quality is not None and have == "jpeg" and quality != have_q:
            raise _error(
                f"workspace {self.url} encodes images with --jpeg-quality {have_q}, not {quality}; "
                f"it is fixed when the workspace is created: use --jpeg-quality {have_q} or a new workspace"
            )
        return have, have_q

    def fix_codec(self, codec: str | None, quality: int | None) -> tuple[str, int]:
        """:meth:`check_codec`, then record the result (the first ingestion fixes it)."""
        got = self.check_codec(codec, quality)
        cfg = self.config()
        if cfg.get("codec") != got[0] or cfg.get("jpeg_quality") != got[1]:
            self.update_config(codec=got[0], jpeg_quality=got[1])
        return got

    def rgb_spec(self, size: int) -> ArraySpec:
        """The spec of a new RGB image array of this workspace (its codec, see :meth:`image_codec`)."""
        from storage.workspace import image_spec

        return image_spec(size, *self.image_codec())

    def dct_size(self, array: str, size: int) -> int | None:
        """``size`` if :meth:`read_items` can decode ``array`` at that size by DCT scaling
        (a JPEG array whose side is 1, 2, 4 or 8 times ``size``), else ``None`` (read at the
        array's own size and resize)."""
        side = int(self.array(array).shape[1])
        if self.codec_of(array) == "jpeg" and side % size == 0 and side // size in (1, 2, 4, 8):
            return size
        return None

    def codec_of(self, array: str) -> str | None:
        """``jpeg`` or ``raw`` for an array in one of mangaka's layouts, ``None`` for another layout."""
        from storage.shards import layout_of

        layout = layout_of(self.array(array))
        return None if layout is None else ("jpeg" if layout.codec == "jpeg" else "raw")
