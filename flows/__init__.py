"""Orchestration: Prefect flows, the command line, and the Dask/Prefect run-time.

Adding a flow: write the computation as ``process_shard(spec) -> result`` in ``tasks/``,
wrap it here with ``@shard_task("name")`` (``flows.ops``: retries on transient errors, no
result cache: the workspace's markers are the cache), write a ``@mangaka_flow("name")``
that plans shards and calls ``flows.shards.run_shards`` (run name, lease, run record and
failure hook come with it), add a command in ``flows/cli.py``, a stage in
``flows/build.py`` and, if it takes a workspace, the flow in ``flows.serve.workspace_flows``
(its backfill deployment).
"""

import logging

# Task and storage code logs through the standard library; Prefect forwards these loggers
# to the run's logs in the UI (PREFECT_LOGGING_EXTRA_LOGGERS), at INFO.
for _name in ("tasks", "storage"):
    logging.getLogger(_name).setLevel(logging.INFO)
