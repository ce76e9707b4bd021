"""Where a cohort of slides runs: in this process, on a new local cluster (of how many
workers), or on a running one; :mod:`napari_care.core.cohort` then starts the cluster and
runs the slides."""

from __future__ import annotations

from napari_care.core.cohort import default_workers


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
