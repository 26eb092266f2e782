"""One Dask scheduler for mangaka with SLURM worker jobs, CPU and GPU (dask-jobqueue).

Run it where the compute nodes can reach it (a login node, or a long batch job), from the
mangaka venv on the shared filesystem, with ``pip install dask-jobqueue`` in it::

    export DASK_CONFIG=$PWD/deploy/hpc     # jobqueue.yaml: sections slurm and slurm-gpu
    export PREFECT_API_URL=http://prefect.example.org:4200/api
    export AWS_ENDPOINT_URL=https://s3.example.org AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...
    python deploy/hpc/slurm_cluster.py --cpu-jobs 4 --gpu-jobs 2 --address-file ~/.mangaka-dask

    # then, anywhere with the same environment:
    mangaka --workspace s3://bucket/ws --dask-address "$(cat ~/.mangaka-dask)" build --src s3://bucket/in

sbatch passes the submitting environment to the jobs (its default ``--export=ALL``), so
the workers get ``PREFECT_API_URL`` and the AWS variables without their being written
anywhere. Ctrl-C (or SIGTERM) cancels the jobs and stops the scheduler. ``--dry-run``
prints both job scripts and submits nothing.
"""

from __future__ import annotations

import argparse
import copy
import signal
import threading
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-jobs", type=int, default=1, help="jobs of the `slurm` section (CPU workers)")
    p.add_argument("--gpu-jobs", type=int, default=0, help="jobs of the `slurm-gpu` section (one GPU worker each)")
    p.add_argument("--address-file", default=None, help="write the scheduler address here")
    p.add_argument("--dry-run", action="store_true", help="print the job scripts, submit nothing")
    a = p.parse_args(argv)

    from dask_jobqueue import SLURMCluster
    from dask_jobqueue.slurm import SLURMJob

    if a.dry_run:
        for section in ("slurm", "slurm-gpu"):
            job = SLURMJob(scheduler="tcp://SCHEDULER:8786", name=section, config_name=section)
            print(f"# ---- jobqueue.{section} ----\n{job.job_script()}")
        return 0

    cluster = SLURMCluster(config_name="slurm")
    cluster.scale(jobs=a.cpu_jobs)
    # GPU jobs join the same scheduler: worker specs of their own, read from `slurm-gpu`
    # (a SpecCluster holds any mix of specs; see flows/runtime.local_cluster).
    gpu = copy.deepcopy(cluster.new_spec)
    gpu.pop("group", None)  # one worker per GPU job
    gpu["options"]["config_name"] = "slurm-gpu"
    for i in range(a.gpu_jobs):
        cluster.worker_spec[f"gpu-{i}"] = copy.deepcopy(gpu)
    cluster.sync(cluster._correct_state)

    address = cluster.scheduler_address
    print(f"--dask-address {address}   (dashboard {cluster.dashboard_link})", flush=True)
    if a.address_file:
        Path(a.address_file).expanduser().write_text(address + "\n")

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    cluster.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
