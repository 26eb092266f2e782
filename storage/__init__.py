"""Every byte on disk or S3: the workspace, its arrays, markers, journal, quarantine, checkpoints.

Nothing outside this package builds a path or opens Zarr. Adding a kind of stored thing:
give it a key layout under the workspace (documented in ``storage.workspace``), write it
atomically through :class:`storage.location.Location`, and make re-writing it idempotent.
"""
