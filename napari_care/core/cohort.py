"""Cohort runs: one task per slide on dask.distributed, a status row back from each.

The per-slide jobs of :mod:`napari_care.core.jobs` do the work and keep a cohort safe to
interrupt and rerun: each skips a finished slide, writes atomically, clears what a killed
run left of its slide, and turns a bad slide into a ``failed`` row. This module only
spreads them over a cluster (:func:`cohort_client`) and gathers the rows
(:func:`run_cohort`); a worker that dies on a slide makes a ``failed`` row too, so the
summary always lists every slide. A job that raises is a ``failed`` row as well, returned
by its task rather than raised: dask retries nothing that fails the same way each time.

>>> from napari_care.core.cohort import cohort_client, run_cohort
>>> from napari_care.core.jobs import expand_slides, segment_job
>>> from napari_care.core.progress import run_to_end
>>> from napari_care.core.segment import SegmentOptions
>>> with cohort_client(n_workers=4) as client:
...     rows = run_to_end(run_cohort(segment_job, expand_slides(["slides/*.svs"]), client=client,
...                                  out_dir="results", options=SegmentOptions()))
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_care.core.jobs import Row, SlideJob, check_unique_stems, failed_row
from napari_care.core.progress import Progress

if TYPE_CHECKING:
    from distributed import Client

CONNECT_TIMEOUT_S = 10  # an unreachable scheduler fails after this, not after dask's 30 s
# What a dask nanny writes into os.environ (its own process's too) before it starts a worker:
# none of it. MALLOC_TRIM_THRESHOLD_ fixes glibc's mmap threshold, so every large array is
# mapped and unmapped afresh: a slide took twice the CPU on a worker as in one process
# (benchmarks/bench_cohort.py). The thread counts go in each worker's own env instead.
NO_PRE_SPAWN_ENVIRON = {
    f"distributed.nanny.pre-spawn-environ.{name}": None
    for name in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
}
STAGE = "slides"


def default_workers() -> int:
    """Worker processes of a local cluster: one per two cores, at least one."""
    return max(1, (os.cpu_count() or 1) // 2)


def cohort_workers(n_slides: int, *, workers: int | None = None, scheduler: str | None = None) -> int | None:
    """Worker processes to start for ``n_slides`` slides: 0 runs them in this process, None
    uses the cluster of ``scheduler``.

    Parameters
    ----------
    n_slides
        Slides of the cohort.
    workers
        Worker processes asked for (0: in this process); None: one per two cores
        (:func:`~napari_care.core.cohort.default_workers`), or this process for a single
        slide, which gains nothing from a cluster but its start-up time.
    scheduler
        Address of a running scheduler, or None for a local cluster.

    Returns
    -------
    At most one worker per slide.
    """
    if scheduler is not None:
        return None
    if workers == 0 or (workers is None and n_slides == 1):
        return 0
    return min(workers or default_workers(), n_slides)


@contextlib.contextmanager
def cohort_client(
    scheduler: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    dashboard_address: str = ":8787",
) -> Iterator[Client]:
    """A dask client on a new local cluster of worker processes, or on a running scheduler.

    Parameters
    ----------
    scheduler
        Address of a running scheduler (``tcp://host:8786``), left running at the end; None
        starts a :class:`distributed.LocalCluster` that is closed when the block ends.
    n_workers
        Worker processes of the local cluster (default :func:`default_workers`).
    threads_per_worker
        Threads per worker process, i.e. slides a worker runs at once. Each worker's
        numerical libraries get its share of the cores (``OMP_NUM_THREADS``).
    dashboard_address
        Where the local cluster serves its dashboard (``":0"``: any free port).

    Raises
    ------
    ValueError
        When ``n_workers`` or ``threads_per_worker`` is below 1.
    OSError
        When the scheduler cannot be reached within ``CONNECT_TIMEOUT_S`` seconds.
    """
    import dask  # dask.distributed only for cohorts
    from distributed import Client, LocalCluster  # dask.distributed only for cohorts

    if scheduler is not None:
        with Client(scheduler, timeout=CONNECT_TIMEOUT_S) as client:
            yield client
        return
    n_workers = default_workers() if n_workers is None else n_workers
    if n_workers < 1 or threads_per_worker < 1:
        raise ValueError(
            f"a local cluster needs at least 1 worker and 1 thread per worker; "
            f"got {n_workers} and {threads_per_worker}"
        )
    # dask pins each worker's BLAS/OpenMP to 1 thread; give each slide thread its share of the cores
    threads = str(max(1, (os.cpu_count() or 1) // (n_workers * threads_per_worker)))
    env = {name: threads for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    # processes, not threads: encoders and CARE hold the GIL for long stretches
    with (
        dask.config.set(NO_PRE_SPAWN_ENVIRON),
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=dashboard_address,
            silence_logs=logging.ERROR,
            env=env,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def dashboard_link(client: Client) -> str | None:
    """The cluster's dashboard address (it asks for ``bokeh`` when that is missing), or None without one."""
    return client.dashboard_link if "dashboard" in client.scheduler_info().get("services", {}) else None


def run_cohort(
    job_function: Callable[..., Row],
    jobs: Sequence[SlideJob],
    *,
    client: Client | None = None,
    on_row: Callable[[Row], None] | None = None,
    **job_kwargs: Any,
) -> Generator[Progress, None, list[Row]]:
    """Run ``job_function(job, **job_kwargs)`` for every slide; yield progress, return the rows.

    Parameters
    ----------
    job_function
        A per-slide job such as :func:`napari_care.core.jobs.segment_job`, importable by the
        workers; it returns a status row and never raises for a bad slide.
    jobs
        The slides.
    client
        Runs one task per slide on this client's cluster; None runs the slides one after
        another in this process.
    on_row
        Called with each slide's row as it finishes (finishing order), e.g. to keep the
        rows of a run that is interrupted.
    **job_kwargs
        Passed to every job (``out_dir``, ``options``, ``overwrite``, ...).

    Yields
    ------
    Progress
        ``stage="slides"``, slides finished of all, with the last slide and the failures so far.

    Returns
    -------
    The rows in the order of ``jobs``. A task that gives no row (its worker died on it
    ``distributed.scheduler.allowed-failures`` + 1 times, or it was cancelled) is a
    ``failed`` row. When the generator is closed early, the slides not started are cancelled.

    Raises
    ------
    ValueError
        When two slides share a name (their outputs would collide).
    """
    check_unique_stems(jobs)
    rows: list[Row | None] = [None] * len(jobs)
    done = failed = 0

    def finish(index: int, row: Row) -> Progress:
        nonlocal done, failed
        rows[index] = row
        done += 1
        failed += row["status"] == "failed"
        if on_row is not None:
            on_row(row)
        return Progress(
            STAGE, done, len(jobs), f"{Path(row['slide']).name}: {row['status']}; {failed} failed"
        )

    yield Progress(STAGE, 0, len(jobs), "starting")
    if client is None:
        for index, job in enumerate(jobs):
            yield finish(index, run_task(job_function, job, **job_kwargs))
        return rows  # type: ignore[return-value]

    from distributed import as_completed  # dask.distributed only for cohorts

    # keys name the slide on the dashboard, and are unique per run: a shared scheduler must not hand
    # back old results
    prefix = f"{getattr(job_function, '__name__', 'job')}-{uuid.uuid4().hex[:8]}"
    futures = [
        client.submit(run_task, job_function, job, key=f"{prefix}-{job.stem}", retries=0, **job_kwargs)
        for job in jobs
    ]
    index_of = {future.key: index for index, future in enumerate(futures)}
    try:
        for future in as_completed(futures):
            index = index_of[future.key]
            yield finish(index, _row_of(future, jobs[index]))
    finally:  # stopped early: slides not started yet do not start
        client.cancel([future for future in futures if not future.done()])
    return rows  # type: ignore[return-value]


def run_task(job_function: Callable[..., Row], job: SlideJob, **job_kwargs: Any) -> Row:
    """One slide's task: ``job_function(job, **job_kwargs)``, and a ``failed`` row if it raises.

    An exception (a full disk, a bug) comes back as the slide's row instead of failing the
    task, so dask neither retries it nor loses the row; only a worker's death is retried
    (``distributed.scheduler.allowed-failures``).
    """
    try:
        return job_function(job, **job_kwargs)
    except Exception as error:  # the job's own frame catches a bad slide; this catches the job
        return failed_row(job, error)


def _row_of(future, job: SlideJob) -> Row:
    """The task's row, or a failed row saying why the task gave none."""
    from distributed import KilledWorker  # dask.distributed only for cohorts

    try:
        return future.result()
    except KilledWorker:
        detail = "the worker died on this slide (out of memory, or killed) each time it was tried"
    except Exception as error:  # cancelled, or a job function that raised
        detail = f"{type(error).__name__}: {error}"
    return {"slide": str(job.path), "status": "failed", "seconds": 0.0, "detail": detail}
