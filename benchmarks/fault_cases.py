"""The hostile cases of issue 16, run for real through ``napari-care`` in subprocesses; a table of results.

    python benchmarks/fault_cases.py                # every case; writes the two files below
    python benchmarks/fault_cases.py --only k-zero  # one case (repeatable), printed only
    python benchmarks/fault_cases.py --list         # the cases' names
    python benchmarks/fault_cases.py --render       # docs/fault_cases.md again from the JSON

Each case makes its inputs in a temporary folder (a 2048 x 1536 generated H&E slide, its
finished output set, broken copies of them; copies of ``../shared/data`` slides where a real
file matters, a row "not available here" without them), runs one command with a timeout and
records: the command (``$TMP``, ``$SHARED`` for the long paths), the exit code, the last line
of stderr, the seconds, whether a traceback appeared, what became of the files (an earlier
result kept byte for byte, no partial file left) and a verdict by the rule of the issue: a
clear message naming the file and the problem, no traceback, no crash, no partial file, no
earlier result lost; exit 2 for bad input, 1 for a failed run.

A full run writes ``docs/results/fault_cases.json`` (commit, command, machine, date, rows)
and ``docs/fault_cases.md`` (the table, generated from the JSON). About two minutes on 2 cores.
The full-disk and read-only cases mount a small tmpfs, which needs root on Linux; elsewhere
their rows say "not available here".
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fault_lab, beside this script

import fault_cases_inputs  # noqa: F401  (registers its cases)
import fault_cases_runs  # noqa: F401  (registers its cases)
from fault_lab import CASES, NOT_HERE, ROOT, Lab, Row, not_here

RESULTS_JSON = ROOT / "docs" / "results" / "fault_cases.json"
TABLE_MD = ROOT / "docs" / "fault_cases.md"

# -- the run and its files ----------------------------------------------------------------------


def run_cases(names: list[str], verbose: bool = False) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="napari_care_faults_") as folder:
        lab = Lab(Path(folder))
        for name in names:
            what, function = CASES[name]
            started = time.perf_counter()
            try:
                result = function(lab)
            except Exception as error:  # the bench's own failure is the row's, not the run's end
                result = not_here("")
                result["verdict"] = "FAIL"
                result["problems"] = [f"the case could not be set up: {type(error).__name__}: {error}"]
            rows.append({"case": name, "what": what, **result})
            print(
                f"{result['verdict']:>4}  {name:28} exit {result['exit_code']!s:>4}  "
                f"{time.perf_counter() - started:5.1f} s  {'; '.join(result['problems'])}",
                flush=True,
            )
            if verbose:
                print(json.dumps(result, indent=2, ensure_ascii=False))
    return rows


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return f"{platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}, load {load}"


def commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" (with uncommitted changes)" if git("status", "--porcelain") else "")


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(document: dict[str, Any]) -> str:
    """The table of ``docs/fault_cases.md`` from the JSON document."""
    rows = document["rows"]
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("ok", "FAIL", NOT_HERE)}
    lines = [
        "# Fault cases (issue 16)",
        "",
        f"Written by `benchmarks/fault_cases.py` on {document['date']} from "
        "`docs/results/fault_cases.json` (commit "
        f"{document['commit']}; {document['machine']}). Regenerate: `{document['command']}`.",
        "",
        "Each case runs `napari-care` in a subprocess on small inputs made in a temporary folder "
        "(`$TMP`; `$SHARED` is `../shared/data`). The verdict follows the issue: a clear message "
        "naming the file and the problem, no traceback, no crash, no partial file, no earlier result "
        "lost; exit 2 for bad input, 1 for a failed run.",
        "",
        f"**{counts['ok']} ok, {counts['FAIL']} FAIL, {counts[NOT_HERE]} {NOT_HERE}** of {len(rows)} cases.",
        "",
        "| case | command | exit | last stderr line | s | traceback | files | verdict | notes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        notes = "; ".join(r["problems"])
        if r["note"]:
            notes = f"{notes} (run: {r['note']})" if notes else r["note"]
        cells = [
            f"**{r['case']}**: {r['what']}",
            f"`{r['command']}`" if r["command"] else "",
            r["exit_code"],
            r["last_stderr_line"],
            r["seconds"],
            r["traceback"],
            r["files"],
            r["verdict"],
            notes,
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="run this case only (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--render", action="store_true", help="rewrite the Markdown table from the JSON")
    parser.add_argument(
        "--write", action="store_true", help="with --only: write the two files anyway (default: print only)"
    )
    parser.add_argument("--verbose", action="store_true", help="print each row in full")
    args = parser.parse_args(argv)
    if args.list:
        for name, (what, _) in CASES.items():
            print(f"{name:28} {what}")
        return 0
    if args.render:
        TABLE_MD.write_text(render_markdown(json.loads(RESULTS_JSON.read_text("utf-8"))), "utf-8")
        print(f"wrote {TABLE_MD}")
        return 0
    unknown = [name for name in args.only or () if name not in CASES]
    if unknown:
        parser.error(f"unknown case {', '.join(unknown)}; --list shows them")
    rows = run_cases(args.only or list(CASES), args.verbose)
    document = {
        "script": "benchmarks/fault_cases.py",
        "commit": commit(),
        "command": " ".join(["python", "benchmarks/fault_cases.py", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "rows": rows,
    }
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("ok", "FAIL", NOT_HERE)}
    print(f"{counts['ok']} ok, {counts['FAIL']} FAIL, {counts[NOT_HERE]} {NOT_HERE}")
    if not args.only or args.write:
        RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
        RESULTS_JSON.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", "utf-8")
        TABLE_MD.write_text(render_markdown(document), "utf-8")
        print(f"wrote {RESULTS_JSON} and {TABLE_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
