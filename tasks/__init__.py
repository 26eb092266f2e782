"""Computation: plain, typed functions that know nothing of Prefect or Dask.

Every bulk step is ``process_shard(spec) -> result``: a small picklable spec in (the
workspace URL, the shard index, the producer version, options), a few numbers out; the
pixels go through the workspace, never through the return value. A shard function is
idempotent: it returns early when the shard's marker already carries its version, and it
writes its marker only after its data. Adding a stage: a module here with an options
model (pydantic), a ``version`` property that changes with anything that changes the
output, and a shard function; then a flow in ``flows/``.
"""
