"""The bench of ``fault_cases.py``: its inputs, one ``napari-care`` run in a subprocess, and the judge.

A :class:`Lab` owns a temporary folder: it makes the inputs the cases share (a small generated
slide, a finished output set, a CARE checkpoint) once, copies real slides from ``../shared/data``
into it when a case needs them (never into the repository), runs the command line with a
timeout (:meth:`Lab.cli`), pauses a run inside a writer for the signal cases
(:meth:`Lab.cli_paused`) and judges a run by the rule of issue 16 (:func:`judge`). The cases
(``fault_cases_inputs.py``, ``fault_cases_runs.py``) register themselves in :data:`CASES` with
:func:`case` and return a :func:`row` of the table.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
TIMEOUT_S = 180.0  # a case that runs longer hangs (every one takes seconds)
SLIDE_SIZE_PX = (2048, 1536)  # the generated slide: 8 x 6 file tiles of 256 px, 0.5 um/px
FILE_TILE_PX = 256

# Runs napari-care with one writer of the output set paused: it leaves a partial temporary,
# says where (the file named by FAULT_PAUSE_READY), then sleeps until a signal arrives.
PAUSED_CLI = """\
import os, sys, time
from pathlib import Path
from napari_care.core import outputs
stage, ready = os.environ["FAULT_PAUSE_STAGE"], Path(os.environ["FAULT_PAUSE_READY"])
def paused(path, *args, **kwargs):
    Path(path).write_bytes(b"half a file")
    ready.write_text(str(path))
    time.sleep(600)
setattr(outputs, stage, paused)
from napari_care.cli.app import main
sys.argv[0] = "napari-care"
main()
"""


@dataclasses.dataclass
class Run:
    """One command-line run: what was run and what came back."""

    args: list[str]  # napari-care's arguments, as a user types them
    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.output

    @property
    def last_stderr_line(self) -> str:
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def napari_care_command() -> list[str]:
    """The ``napari-care`` entry point beside this Python, or the same through ``python -c``."""
    script = Path(sys.executable).with_name("napari-care")
    if script.is_file():
        return [str(script)]
    return [
        sys.executable,
        "-c",
        "import sys; from napari_care.cli.app import main; sys.argv[0] = 'napari-care'; main()",
    ]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (temporaries included), by relative path, with its bytes."""
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def partial_files(folder: Path) -> list[str]:
    """The temporaries (``.<name>.XXXXXXXX.part``) and probe files left under ``folder``."""
    if not folder.is_dir():
        return []
    return sorted(
        p.name
        for p in folder.rglob(".*")
        if p.name.endswith(".part") or p.name.startswith(".napari-care-probe")
    )


class Lab:
    """The temporary folder of a run of the fault cases, and the inputs they share.

    Parameters
    ----------
    root
        An empty folder, removed by the caller.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._slide: Path | None = None
        self._finished: Path | None = None

    def path(self, name: str) -> Path:
        """A fresh path in the lab (its folder created)."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def slide(self) -> Path:
        """A generated H&E slide: pyramidal JPEG OME-TIFF, 2048 x 1536 px at 0.5 um/px."""
        if self._slide is None:
            from napari_care.core.synthetic.slides import build_synthetic_slide

            path = self.path("inputs/slide.ome.tif")
            width, height = SLIDE_SIZE_PX
            build_synthetic_slide(
                path, width=width, height=height, tile_size=FILE_TILE_PX, swatch_px=256, workers=1
            )
            self._slide = path
        return self._slide

    def slide_copy(self, name: str) -> Path:
        """A copy of :meth:`slide` at ``name`` (in the lab)."""
        target = self.path(name)
        shutil.copyfile(self.slide(), target)
        return target

    def finished(self) -> Path:
        """A folder where :meth:`slide` was segmented with the defaults (features, regions, summary)."""
        if self._finished is None:
            out = self.path("inputs/finished")
            run = self.cli("segment", self.slide(), "--out", out, "--quiet")
            if run.returncode != 0:
                raise RuntimeError(f"the reference segmentation failed:\n{run.output}")
            self._finished = out
        return self._finished

    def finished_copy(self, name: str) -> Path:
        """A copy of :meth:`finished` at ``name`` (in the lab), the summary CSV left out."""
        target = self.path(name)
        shutil.copytree(self.finished(), target, ignore=shutil.ignore_patterns("*-summary.csv"))
        return target

    def shared(self, relative: str) -> Path | None:
        """A copy in the lab of ``../shared/data/<relative>``; None when it is absent."""
        source = SHARED_DATA / relative
        if not source.is_file():
            return None
        target = self.path(f"shared/{source.name}")
        if not target.exists():
            shutil.copyfile(source, target)
            target.chmod(0o644)
        return target

    def cli(self, *args: object, env: dict[str, str] | None = None, timeout_s: float = TIMEOUT_S) -> Run:
        """Run ``napari-care ARGS`` in the lab; a run past ``timeout_s`` is killed (returncode None)."""
        shown = [str(a) for a in args]
        return self._run([*napari_care_command(), *shown], shown, env, timeout_s)

    def cli_paused(
        self, stage: str, deliver: signal.Signals, *args: object, timeout_s: float = TIMEOUT_S
    ) -> tuple[Run, str]:
        """Run ``napari-care ARGS`` with ``napari_care.core.outputs.<stage>`` paused after it wrote
        part of its file; deliver ``deliver`` there. Returns the run and the temporary it was writing
        ("" when the run never got there)."""
        ready = self.path(f"signals/ready-{time.monotonic_ns()}")
        env = {"FAULT_PAUSE_STAGE": stage, "FAULT_PAUSE_READY": str(ready)}
        shown = [str(a) for a in args]
        argv = [sys.executable, "-c", PAUSED_CLI, *shown]
        started = time.perf_counter()
        process = subprocess.Popen(
            argv,
            cwd=self.root,
            env=os.environ | env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        while not ready.exists() and process.poll() is None and time.perf_counter() - started < timeout_s:
            time.sleep(0.05)
        temporary = ready.read_text() if ready.exists() else ""
        if temporary:
            process.send_signal(deliver)
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            return Run(shown, None, stdout, stderr, time.perf_counter() - started), temporary
        return Run(shown, process.returncode, stdout, stderr, time.perf_counter() - started), temporary

    def _run(self, argv: list[str], shown: list[str], env: dict[str, str] | None, timeout_s: float) -> Run:
        started = time.perf_counter()
        try:
            done = subprocess.run(
                argv,
                cwd=self.root,
                env=os.environ | (env or {}),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as expired:
            out = expired.stdout.decode() if isinstance(expired.stdout, bytes) else expired.stdout or ""
            err = expired.stderr.decode() if isinstance(expired.stderr, bytes) else expired.stderr or ""
            return Run(shown, None, out, err, time.perf_counter() - started)
        return Run(shown, done.returncode, done.stdout, done.stderr, time.perf_counter() - started)

    def short(self, text: str) -> str:
        """``text`` with ``$TMP`` for the lab's folder and ``$SHARED`` for ``../shared/data``."""
        return text.replace(str(self.root), "$TMP").replace(str(SHARED_DATA), "$SHARED")

    def command(self, run: Run) -> str:
        """The command of ``run`` as a user types it, the long paths shortened."""
        return self.short(" ".join(_quoted(a) for a in ["napari-care", *run.args]))


def _quoted(word: str) -> str:
    return f"'{word}'" if any(c in word for c in " |") else word


def judge(
    run: Run,
    *,
    exit_codes: Sequence[int],
    mentions: Sequence[str | tuple[str, ...]] = (),
    where: str | None = None,
    folder: Path | None = None,
    kept: dict[str, bytes] | None = None,
    absent: Sequence[Path] = (),
) -> list[str]:
    """What is wrong with ``run`` by the rule of issue 16 (empty: ok).

    Parameters
    ----------
    run
        The run.
    exit_codes
        The exit codes the case allows (2 for bad input, 1 for a failed run, 0 for work done).
    mentions
        Words the message must hold (the file's name, the problem), looked for in ``where`` or,
        when None, in the whole output (case-insensitive); a tuple holds alternatives.
    folder
        The output folder: no temporary (``.part``) or probe file may be left in it.
    kept
        The folder's files before the run (:func:`snapshot`): they must be there byte for byte.
    absent
        Files the run must not have left.
    """
    problems = []
    if run.returncode is None:
        problems.append(f"no exit after {TIMEOUT_S:.0f} s (hangs)")
    elif run.returncode < 0 or run.returncode >= 128:
        problems.append(f"crashed (exit {run.returncode})")
    elif run.returncode not in exit_codes:
        problems.append(f"exit {run.returncode}, expected {' or '.join(map(str, exit_codes))}")
    if run.traceback:
        problems.append("a traceback")
    text = (run.output if where is None else where).lower()
    missing = [
        " or ".join(repr(w) for w in (word if isinstance(word, tuple) else (word,)))
        for word in mentions
        if not any(w.lower() in text for w in (word if isinstance(word, tuple) else (word,)))
    ]
    if missing:
        problems.append(f"the message does not say {', '.join(missing)}")
    if folder is not None and partial_files(folder):
        problems.append(f"partial files left: {', '.join(partial_files(folder))}")
    if kept is not None and folder is not None:
        now = snapshot(folder)
        lost = [name for name, data in kept.items() if now.get(name) != data]
        if lost:
            problems.append(f"earlier result changed or lost: {', '.join(lost)}")
    left = [str(p.name) for p in absent if p.exists()]
    if left:
        problems.append(f"left behind: {', '.join(left)}")
    return problems


# -- the rows of the table ---------------------------------------------------------------------

NOT_HERE = "not available here"

Row = dict[str, Any]
CASES: dict[str, tuple[str, Callable[[Lab], Row]]] = {}


def case(name: str, what: str) -> Callable[[Callable[[Lab], Row]], Callable[[Lab], Row]]:
    """Register a case: ``name`` for ``--only``, ``what`` for the table."""

    def register(function: Callable[[Lab], Row]) -> Callable[[Lab], Row]:
        CASES[name] = (what, function)
        return function

    return register


def row(lab: Lab, run: Run, problems: list[str], files: str, note: str = "") -> Row:
    """A row of the table from a run and what was found wrong with it."""
    return {
        "command": lab.command(run),
        "exit_code": run.returncode,
        "last_stderr_line": lab.short(run.last_stderr_line)[:300],
        "seconds": round(run.seconds, 2),
        "traceback": run.traceback,
        "files": files,
        "verdict": "FAIL" if problems else "ok",
        "problems": problems,
        "note": lab.short(note),
    }


def not_here(reason: str) -> Row:
    return {
        "command": "",
        "exit_code": None,
        "last_stderr_line": "",
        "seconds": 0.0,
        "traceback": False,
        "files": "",
        "verdict": NOT_HERE,
        "problems": [],
        "note": reason,
    }


def files_note(folder: Path, kept: dict[str, bytes] | None = None, slide_files: str | None = None) -> str:
    """What the run left in ``folder``: the earlier set kept or not, partial files, the slide's outputs."""
    if not folder.exists():
        return "nothing written (no folder)"
    parts = []
    if kept is not None:
        now = snapshot(folder)
        lost = [name for name, data in kept.items() if now.get(name) != data]
        parts.append(
            "earlier set kept byte for byte" if not lost else f"earlier set changed: {', '.join(lost)}"
        )
    partial = partial_files(folder)
    parts.append("no partial file" if not partial else f"partial files: {', '.join(partial)}")
    if slide_files is not None:
        outputs = sorted(p.name for p in folder.glob(f"{slide_files}.*"))
        parts.append(f"outputs: {', '.join(outputs)}" if outputs else "no output of the slide")
    return "; ".join(parts)


def summary_rows(folder: Path, command: str = "segment") -> list[dict[str, str]]:
    path = folder / f"{command}-summary.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def summary_detail(folder: Path, command: str = "segment") -> str:
    """``status: detail`` of each row of the run's summary CSV ("" without one)."""
    return " | ".join(f"{r['status']}: {r['detail']}" for r in summary_rows(folder, command))


def segment(lab: Lab, slide: Path, out: Path, *options: object) -> Run:
    return lab.cli("segment", slide, "--out", out, "--quiet", *options)


def unique_problems(problems: list[str]) -> list[str]:
    """``problems`` without repeats, in order."""
    return list(dict.fromkeys(problems))
