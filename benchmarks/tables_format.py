"""The pieces every results table is made of: a Markdown table, mean +- sd, the source line."""

from __future__ import annotations


def mean_sd(stat: dict, digits: int = 2) -> str:
    return f"{stat['mean']:.{digits}f} +- {stat['sd']:.{digits}f}"


def source_line(result: dict) -> str:
    commit = str(result.get("commit", "unknown"))
    commit = commit[:12] + (" with uncommitted changes" if commit.endswith("+uncommitted") else "")
    command = result.get("command", "")
    machine = result.get("machine", {})
    load = machine.get("load_average_at_end") if isinstance(machine, dict) else None
    tail = f", load at the end {load[0]:.2f}" if load else ""
    return f"*From `docs/results/{result['experiment']}.json` (`{command}`, commit `{commit}`{tail}).*\n"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
