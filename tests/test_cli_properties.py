"""Property-based tests of ``segment`` / ``extract`` option parsing (issue 16, item 7).

Random values for the numeric options, from good numbers to junk: the command either passes the
parsed value unchanged to the core (recorded by fakes of the cohort runner, so no slide is
computed) or exits 2 with a one-line message naming the option; never a traceback. Range checks
(``--k 0``, ``--tile-size 5``, ...) may refuse a value up front: exit 2 naming it is accepted too.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import event, given, settings
from hypothesis import strategies as st

from napari_care.cli import app
from napari_care.cli import jobs as cli_jobs
from napari_care.core import cohort
from napari_care.core.synthetic.slides import build_synthetic_slide

# flag -> (type, minimum click itself enforces or None, where the value lands, dest name)
INT, FLOAT = int, float
OPTIONS = {
    "--k": (INT, None, "options.k", "k"),
    "--groups": (INT, None, "options.n_groups", "n_groups"),
    "--tile-size": (INT, None, "options.tile_size_px", "tile_size_px"),
    "--magnification": (FLOAT, None, "options.magnification", "magnification"),
    "--min-tissue": (FLOAT, None, "options.min_tissue", "min_tissue"),
    "--mpp": (FLOAT, None, "job.mpp", "mpp"),
    "--workers": (INT, 0, "workers", "workers"),
    "--threads-per-worker": (INT, 1, "threads_per_worker", "threads_per_worker"),
}
SEGMENT_ONLY = {"--k", "--groups"}

special_texts = st.sampled_from(
    [
        "",
        " ",
        "0",
        "-0",
        "-1",
        "+5",
        " 7 ",
        "1_000",
        "0x10",
        "1e3",
        "1.5",
        "-2.5",
        ".5",
        "nan",
        "NaN",
        "inf",
        "-inf",
        "Infinity",
        "1e400",
        "-1e400",
        "9" * 30,
        "9" * 5000,  # over Python's 4300-digit limit for int()
        "١٢",  # Arabic-Indic digits: int() takes them
        "abc",
        "1,5",
        "--out",
        "-h",
        "--help",
        "--",
        "true",
        "None",
        "\x00",
        "1\n2",
    ]
)
option_values = st.one_of(
    special_texts,
    st.integers(-(10**6), 10**6).map(str),
    st.integers(-(10**40), 10**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(0, 100, allow_nan=False).map(str),
    st.text(max_size=6),
)


def parsed(kind, text: str):
    """What click's INT/FLOAT make of the text (they call int()/float()), or None when they refuse it."""
    try:
        return kind(text)
    except (ValueError, OverflowError):
        return None


def same(got, want) -> bool:
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    return type(got) is type(want) and got == want


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli_properties") / "tiny.ome.tif"
    build_synthetic_slide(path, width=1024, height=1024, swatch_px=256, tile_size=256, workers=1)
    return path


def no_rows():
    """A cohort run that finishes at once with no rows (what drive() returns)."""
    return []
    yield


@contextlib.contextmanager
def recording_runner():
    """Fakes of the cohort runner and the cluster: what reaches the core is recorded, nothing runs."""
    seen: dict = {}

    def fake_workers(n_slides, *, workers=None, scheduler=None, **_):
        seen["workers"] = workers
        return 1  # "a local cluster": start_cluster gets threads_per_worker

    def fake_start_cluster(stack, scheduler, n_workers, threads_per_worker, n_slides):
        seen["threads_per_worker"] = threads_per_worker

    def fake_run_cohort(job_function, jobs, **kwargs):
        seen["options"], seen["jobs"] = kwargs.get("options"), list(jobs)
        return no_rows()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cohort, "cohort_workers", fake_workers)
        patch.setattr(cohort, "run_cohort", fake_run_cohort)
        patch.setattr(cli_jobs, "start_cluster", fake_start_cluster)
        yield seen


def landed(seen: dict, where: str):
    if where.startswith("options."):
        return getattr(seen["options"], where.split(".", 1)[1])
    if where == "job.mpp":
        [job] = seen["jobs"]
        return job.mpp
    return seen[where]


def check_result(result, values: dict[str, str], seen: dict) -> None:
    """exit 0 with every value through unchanged, or exit 2 with one error line naming an option."""
    assert "Traceback" not in result.output, result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"a traceback for {values}: {result.exception!r}") from result.exception
    assert result.exit_code in (0, 2), (values, result.exit_code, result.output)
    refused_by_click = {
        flag
        for flag, text in values.items()
        if parsed(OPTIONS[flag][0], text) is None
        or (OPTIONS[flag][1] is not None and parsed(OPTIONS[flag][0], text) < OPTIONS[flag][1])
    }
    if result.exit_code == 0:
        assert not refused_by_click, (values, result.output)
        for flag, text in values.items():
            kind, _, where, _ = OPTIONS[flag]
            want = parsed(kind, text)
            assert same(landed(seen, where), want), (flag, text, landed(seen, where))
        return
    errors = [line for line in result.output.splitlines() if line.startswith(("Error:", "napari-care:"))]
    errors = [line for line in errors if not line.startswith("napari-care: warning:")]
    assert len(errors) == 1, (values, result.output)
    names = {name for flag in values for name in (flag, flag[2:], OPTIONS[flag][3])}
    assert any(name in errors[0] for name in names), (values, result.output)
    if refused_by_click:  # click's own refusal names one of the bad values' options
        assert any(flag in errors[0] for flag in refused_by_click) or "--" not in errors[0], (values, errors)


def invoke(command: str, slide: Path, values: dict[str, str], *, equals: bool):
    with tempfile.TemporaryDirectory() as out:
        args = [command, str(slide), "--out", out, "--quiet"]
        for flag, text in values.items():  # "--k=-5", or the value as the next argument, last
            args += [f"{flag}={text}"] if equals else [flag, text]
        with recording_runner() as seen:
            result = CliRunner().invoke(app.main, args)
        return result, seen


@pytest.mark.parametrize(
    "text", ["inf", "Infinity", "1e400", "9" * 400], ids=["inf", "Infinity", "1e400", "400-digit-integer"]
)
def test_infinite_magnification_is_refused(slide, text):
    """click parses these to float inf: refused naming the option (was a ZeroDivisionError traceback)."""
    result, seen = invoke("segment", slide, {"--magnification": text}, equals=False)
    check_result(result, {"--magnification": text}, seen)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(OPTIONS)), option_values, st.booleans(), st.booleans())
def test_one_option_is_passed_through_or_refused_with_exit_2(slide, flag, text, equals, extract):
    command = "extract" if extract and flag not in SEGMENT_ONLY else "segment"
    result, seen = invoke(command, slide, {flag: text}, equals=equals)
    event(f"exit {result.exit_code}")
    check_result(result, {flag: text}, seen)


# values every version of the range checks accepts (the sample slide is a 20x scan)
GOOD_VALUES = {
    "--k": st.integers(1, 64).map(str),
    "--groups": st.integers(2, 32).map(str),
    "--tile-size": st.integers(16, 1024).map(str),
    "--magnification": st.floats(1, 20).map(str),
    "--min-tissue": st.floats(0, 1).map(str),
    "--mpp": st.floats(0.1, 2).map(str),
    "--workers": st.integers(0, 8).map(str),
    "--threads-per-worker": st.integers(1, 8).map(str),
}


@st.composite
def option_sets(draw) -> dict[str, str]:
    """Two to eight options, most with a good value (so that some runs get through), some with junk."""
    flags = draw(st.lists(st.sampled_from(sorted(OPTIONS)), min_size=2, max_size=8, unique=True))
    return {
        flag: draw(option_values if draw(st.integers(0, 5)) == 0 else GOOD_VALUES[flag]) for flag in flags
    }


@settings(max_examples=60, deadline=None)
@given(option_sets())
def test_many_options_at_once(slide, given_options):
    result, seen = invoke("segment", slide, given_options, equals=True)
    event(f"exit {result.exit_code}")
    check_result(result, given_options, seen)


@pytest.mark.parametrize(
    ("flag", "text"),
    [
        ("--k", "abc"),
        ("--groups", ""),
        ("--tile-size", "1.5"),
        ("--workers", "-1"),
        ("--threads-per-worker", "0"),
    ],
)
def test_click_refusals_name_the_option(slide, flag, text):
    result, _ = invoke("segment", slide, {flag: text}, equals=False)
    assert result.exit_code == 2 and flag in result.output and "Traceback" not in result.output


def test_good_values_reach_the_core(slide):
    given_options = {
        "--k": "4",
        "--groups": "3",
        "--tile-size": "128",
        "--magnification": "10",
        "--min-tissue": "0.5",
        "--mpp": "0.5",
        "--workers": "2",
        "--threads-per-worker": "2",
    }
    result, seen = invoke("segment", slide, given_options, equals=False)
    assert result.exit_code == 0, result.output
    check_result(result, given_options, seen)
