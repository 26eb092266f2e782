"""Orchestration: Prefect flows, the command line, and the Dask/Prefect run-time.

Adding a flow: write the computation as ``process_shard(spec) -> result`` in ``tasks/``,
wrap it here in a ``@task`` (retries on the decorator, ``cache_policy=NO_CACHE``: the
workspace's markers are the cache), write a ``@flow`` that plans shards and calls
``flows.shards.run_shards``, add a command in ``flows/cli.py`` and a stage in
``flows/build.py``.
"""

import logging

# Task and storage code logs through the standard library; Prefect forwards these loggers
# to the run's logs in the UI (PREFECT_LOGGING_EXTRA_LOGGERS), at INFO.
for _name in ("tasks", "storage"):
    logging.getLogger(_name).setLevel(logging.INFO)
