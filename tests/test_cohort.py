"""Cohort runs on a real LocalCluster with worker processes: failures as rows, resume, no half files.

The slides: two small synthetic H&E slides, one without a pixel size, one blank (no tissue)
and a truncated .svs. One cluster (2 worker processes, 1 thread each) serves the module.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import dask
import distributed  # noqa: F401 (its config must be loaded before dask.config.set touches it)
import numpy as np
import psutil
import pytest
import tifffile
from click.testing import CliRunner

from napari_care.cli.app import main
from napari_care.core.atomic import atomic_path
from napari_care.core.cohort import cohort_client, dashboard_link, run_cohort
from napari_care.core.features import load_features
from napari_care.core.jobs import (
    SlideJob,
    check_unique_stems,
    expand_slides,
    remove_partial_files,
    segment_job,
)
from napari_care.core.progress import run_to_end
from napari_care.core.segment import SegmentOptions
from napari_care.core.synthetic.slides import build_synthetic_slide

GOOD = ("good1", "good2")
_ABANDONED = []  # unfinished atomic writes, kept alive: closing one cleans up as a living process would


def write_cohort_slides(folder: Path) -> Path:
    """good1/good2.ome.tif (0.5 um/px), nompp.tif (no pixel size), blank.tif (no tissue), broken.svs.

    Written once per test session (both cohort test files read them; nobody writes there).
    """
    if (folder / "broken.svs").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for seed, stem in enumerate(GOOD):
        build_synthetic_slide(
            folder / f"{stem}.ome.tif",
            width=2048,
            height=1536,
            seed=seed,
            swatch_px=256,
            tile_size=256,
            workers=1,
        )
        (folder / f"{stem}.truth.npz").unlink()
    pixels = tifffile.imread(folder / "good1.ome.tif")
    tifffile.imwrite(folder / "nompp.tif", pixels, tile=(256, 256), photometric="rgb")
    tifffile.imwrite(
        folder / "blank.tif",
        np.full((1024, 1024, 3), 250, np.uint8),
        tile=(256, 256),
        photometric="rgb",
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
    )
    (folder / "broken.svs").write_bytes((folder / "good2.ome.tif").read_bytes()[:5000])
    return folder


def interrupted_write(target: Path) -> Path:
    """What a killed process leaves behind: an atomic write's temporary file, half written."""
    pending = atomic_path(target)
    tmp = pending.__enter__()
    tmp.write_bytes(b"half an HDF5 file")
    _ABANDONED.append(pending)
    return tmp


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    return write_cohort_slides(tmp_path_factory.getbasetemp() / "cohort_slides")


def worker_processes() -> list[psutil.Process]:
    """This process's children that are dask worker processes (multiprocessing spawn children)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "spawn_main" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
    return found


@pytest.fixture(scope="module")
def client():
    # a task whose worker dies fails at once (dask's default retries it on 3 more workers)
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        cohort_client(n_workers=2, threads_per_worker=1, dashboard_address=":0") as client,
    ):
        assert len(worker_processes()) == 2
        yield client
    assert not worker_processes(), "worker processes left running"


def by_stem(rows: list[dict]) -> dict[str, dict]:
    return {SlideJob(Path(row["slide"])).stem: row for row in rows}


def test_cohort_reports_bad_slides_resumes_and_cleans_up(slides, client, tmp_path):
    out = tmp_path / "out"
    leftover = interrupted_write(out / "good1.features.h5")
    jobs = expand_slides([str(slides / "*")])
    assert len(jobs) == 5
    seen = []

    rows = run_to_end(
        run_cohort(
            segment_job, jobs, client=client, on_row=seen.append, out_dir=out, options=SegmentOptions()
        )
    )

    assert [row["slide"] for row in rows] == [str(job.path) for job in jobs]  # the order of the jobs
    assert sorted(row["slide"] for row in seen) == sorted(row["slide"] for row in rows)
    status = by_stem(rows)
    assert {stem: row["status"] for stem, row in status.items()} == {
        "good1": "done",
        "good2": "done",
        "nompp": "failed",
        "blank": "failed",
        "broken": "failed",
    }
    assert "no pixel size (mpp)" in status["nompp"]["detail"]
    assert "no tissue" in status["blank"]["detail"]
    assert status["broken"]["detail"]
    assert not leftover.exists()
    for stem in GOOD:
        features = load_features(out / f"{stem}.features.h5")
        summary = json.loads((out / f"{stem}.care.json").read_text())
        assert summary["patches"] == len(features) > 10
        assert json.loads((out / f"{stem}.regions.geojson").read_text())["type"] == "FeatureCollection"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}{suffix}"
        for stem in GOOD
        for suffix in (
            ".care.json",
            ".care.npz",
            ".features.h5",
            ".measurements.csv",
            ".regions.geojson",
            ".slide_features.h5",
        )
    )

    again = by_stem(
        run_to_end(run_cohort(segment_job, jobs, client=client, out_dir=out, options=SegmentOptions()))
    )
    assert [again[stem]["status"] for stem in GOOD] == ["skipped", "skipped"]
    assert [again[stem]["status"] for stem in ("nompp", "blank", "broken")] == ["failed"] * 3


def test_a_worker_killed_while_writing_leaves_no_half_output(slides, client, tmp_path):
    out = tmp_path / "out"

    def die_while_writing_regions(job, **kwargs):  # pickled by value: the workers cannot import tests
        import os

        from napari_care.core import outputs  # the module that calls write_geojson

        def write_half_and_die(path, *args, **kw):
            with atomic_path(path) as tmp:
                tmp.write_text('{"type": "FeatureCollection", "feat')
                os._exit(1)

        outputs.write_geojson = write_half_and_die
        return segment_job(job, **kwargs)

    jobs = [SlideJob(slides / "good2.ome.tif")]
    rows = run_to_end(
        run_cohort(die_while_writing_regions, jobs, client=client, out_dir=out, options=SegmentOptions())
    )
    assert rows[0]["status"] == "failed" and "worker died" in rows[0]["detail"]
    assert not (out / "good2.regions.geojson").exists() and not (out / "good2.care.json").exists()
    assert len(list(out.glob(".good2.regions.geojson.*.part"))) == 1
    # issue 16: the set is one transaction, so the features written before the kill wait as a temporary
    assert not (out / "good2.features.h5").exists()
    assert len(load_features(next(out.glob(".good2.features.h5.*.part")))) > 10  # whole, not in place

    rows = run_to_end(run_cohort(segment_job, jobs, client=client, out_dir=out, options=SegmentOptions()))
    assert rows[0]["status"] == "done"
    assert not list(out.glob(".*.part"))
    assert json.loads((out / "good2.regions.geojson").read_text())["features"]


def test_a_deterministic_failure_is_a_row_and_is_not_retried(slides, client, tmp_path):
    out = tmp_path / "out"
    attempts = tmp_path / "attempts.txt"

    def disk_full_while_writing_regions(job, **kwargs):  # pickled by value, like the one above
        import errno

        from napari_care.core import outputs

        def no_space(path, *args, **kw):
            with open(attempts, "a") as handle:
                handle.write("regions\n")
            raise OSError(errno.ENOSPC, "No space left on device")

        real, outputs.write_geojson = outputs.write_geojson, no_space
        try:
            return segment_job(job, **kwargs)
        finally:  # the worker lives on
            outputs.write_geojson = real

    def raises(job, **kwargs):  # a job that raises by itself, outside the frame of run_job
        with open(attempts, "a") as handle:
            handle.write("raises\n")
        raise RuntimeError(f"{job.stem} cannot be done")

    jobs = [SlideJob(slides / "good1.ome.tif")]
    with dask.config.set({"distributed.scheduler.allowed-failures": 3}):
        full = run_to_end(
            run_cohort(
                disk_full_while_writing_regions, jobs, client=client, out_dir=out, options=SegmentOptions()
            )
        )[0]
        raised = run_to_end(run_cohort(raises, jobs, client=client, out_dir=out, options=SegmentOptions()))[0]
    assert full["status"] == "failed"
    assert (
        full["detail"]
        == f"good1.ome.tif: no space left on device while writing {out / 'good1.regions.geojson'}"
    )
    assert (raised["status"], raised["detail"]) == ("failed", "RuntimeError: good1 cannot be done")
    assert attempts.read_text().split() == ["regions", "raises"]  # each tried once
    assert not out.exists() or not list(out.iterdir())  # nothing in place, no temporary left
    in_process = run_to_end(run_cohort(raises, jobs, out_dir=out, options=SegmentOptions()))[0]
    assert in_process["detail"] == "RuntimeError: good1 cannot be done"


def test_cli_on_an_existing_scheduler(slides, client, tmp_path):
    address = client.scheduler.address
    args = [
        "segment",
        str(slides / "good*.ome.tif"),
        "--out",
        str(tmp_path),
        "--scheduler",
        address,
        "--quiet",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    # on 1 or 2 workers: the one killed above may be restarting
    assert re.search(
        rf"2 slides on [12] dask workers; dashboard: {re.escape(dashboard_link(client))}\n", result.stderr
    )
    assert "2 done, 0 skipped, 0 failed" in result.stdout
    assert client.status == "running"  # the CLI leaves a cluster it did not start running
    assert CliRunner().invoke(main, [*args, "--workers", "2"]).exit_code == 2


def test_remove_partial_files_takes_only_this_slides(tmp_path):
    mine = [interrupted_write(tmp_path / f"a{suffix}") for suffix in (".features.h5", ".care.json")]
    other = interrupted_write(tmp_path / "a.b.features.h5")  # slide "a.b", whose name starts like "a"
    (tmp_path / "a.features.h5").write_bytes(b"finished")
    assert sorted(remove_partial_files(tmp_path, "a")) == sorted(mine)
    assert other.exists() and (tmp_path / "a.features.h5").exists()


def test_slides_with_one_name_are_refused(tmp_path):
    with pytest.raises(ValueError, match="share the name 'x'"):
        check_unique_stems([SlideJob(tmp_path / "a" / "x.svs"), SlideJob(tmp_path / "b" / "x.tif")])
    with pytest.raises(ValueError, match="share the name 'x'"):
        check_unique_stems([SlideJob(tmp_path / "x.svs"), SlideJob(tmp_path / "x.svs")])
    (tmp_path / "x.svs").touch()
    assert expand_slides([str(tmp_path / "x.svs"), str(tmp_path / "*.svs")]) == [SlideJob(tmp_path / "x.svs")]


def _environment() -> dict[str, str | None]:
    import os

    return {name: os.environ.get(name) for name in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}


def test_workers_keep_glibcs_malloc_and_get_their_share_of_the_cores(monkeypatch):
    """dask's nanny would set MALLOC_TRIM_THRESHOLD_ (a slide then took twice the CPU on a
    worker) and OMP_NUM_THREADS=1 in the workers and in this process; neither happens."""
    import os

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with cohort_client(n_workers=1, dashboard_address=":0") as client:
        [worker_env] = client.run(_environment).values()
    assert worker_env["MALLOC_TRIM_THRESHOLD_"] is None
    assert worker_env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 1))
    assert _environment() == {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": None}  # this process
