"""Markdown tables of the results files in ``docs/results/`` (see :mod:`make_tables`).

A table is a function ``<experiment>__<table>(result: dict) -> str`` of the experiment's JSON;
its name in a doc's block is ``<experiment>.<table>``. Each table ends with the line that says
where its figures come from (script, commit, load).
"""

from __future__ import annotations


def _mean_sd(stat: dict, digits: int = 2) -> str:
    return f"{stat['mean']:.{digits}f} +- {stat['sd']:.{digits}f}"


def _source(result: dict) -> str:
    commit = str(result.get("commit", "unknown"))
    commit = commit[:12] + (" with uncommitted changes" if commit.endswith("+uncommitted") else "")
    command = result.get("command", "")
    machine = result.get("machine", {})
    load = machine.get("load_average_at_end") if isinstance(machine, dict) else None
    tail = f", load at the end {load[0]:.2f}" if load else ""
    return f"*From `docs/results/{result['experiment']}.json` (`{command}`, commit `{commit}`{tail}).*\n"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def auto_groups__test(result: dict) -> str:
    """The automatic number of groups on the test slides, per planted type count."""
    test = result["test"]
    rows = [
        [
            str(row["planted"]),
            str(row["slides"]),
            ", ".join(str(n) for n in row["chosen_n"]),
            f"{row['exact_rate']:.0%}",
            _mean_sd(row["ari_chosen"]),
            _mean_sd(row["ari_oracle"]),
            _mean_sd(row["ari_region_ceiling"]),
        ]
        for row in test["per_planted_count"]
    ]
    overall = test["overall"]
    rows.append(
        [
            "all",
            str(overall["slides"]),
            "",
            f"{overall['exact_rate']:.0%}",
            _mean_sd(overall["ari_chosen"]),
            _mean_sd(overall["ari_oracle"]),
            "",
        ]
    )
    header = [
        "planted types",
        "slides",
        "chosen N",
        "N = planted",
        "ARI at chosen N",
        "ARI at planted N",
        "ARI ceiling of the regions",
    ]
    seeds = ", ".join(str(s) for s in test["seeds"])
    return (
        f"Test seeds {seeds}; criterion `{test['criterion']}` (chosen on development seeds "
        f"{', '.join(str(s) for s in result['development']['seeds'])}). ARI: mean +- sd over the slides.\n\n"
        + _table(header, rows)
        + "\n"
        + _source(result)
    )


def auto_groups__development(result: dict) -> str:
    """Every candidate criterion on the development slides (what the choice saw)."""
    development = result["development"]
    rows = [
        [f"`{name}`", f"{c['exact_rate']:.0%}", _mean_sd(c["ari_chosen"]), f"{c['mean_abs_error']:.2f}"]
        for name, c in development["candidates"].items()
    ]
    header = ["criterion@tolerance", "N = planted", "ARI at chosen N", "mean abs(N - planted)"]
    return (
        f"Development seeds {', '.join(str(s) for s in development['seeds'])} "
        f"({development['slides']} slides); chosen: `{development['chosen_candidate']}`.\n\n"
        + _table(header, rows)
        + "\n"
        + _source(result)
    )


def features_segment__summary(result: dict) -> str:
    """Segmenting from TRIDENT features against segmenting with extraction."""
    data = result["data"]
    width, height = data["level0_px"]
    extraction, features = result["seconds_with_extraction"], result["seconds_from_features"]
    rows = [
        [
            "with extraction (`segment SLIDES`)",
            f"{extraction['median']:.1f} s",
            f"{extraction['min']:.1f}-{extraction['max']:.1f} s",
        ],
        [
            "from TRIDENT features (`segment --features`)",
            f"{features['median']:.1f} s",
            f"{features['min']:.1f}-{features['max']:.1f} s",
        ],
    ]
    return (
        f"{data['slides']} generated slides of {width} x {height} px ({data['patches_total']:,} patches, "
        f"encoder `{data['encoder']}`), {result['repeats']} repeats; "
        f"{result['speedup_median']:.1f}x; same regions and ROI: {result['same_regions_and_roi']}.\n\n"
        + _table(["run", "median", "range"], rows)
        + "\n"
        + _source(result)
    )


def cohort__summary(result: dict) -> str:
    """A cohort on a local dask cluster against one process."""
    data = result["data"]
    width, height = data["level0_px"]
    tiles = data["tiles_per_slide"]
    rows = []
    for workers, figures in result["workers"].items():
        seconds = figures["seconds"]
        rows.append(
            [
                "one process" if workers == "0" else f"local cluster, {workers} worker(s)",
                f"{seconds['median']:.1f} s"
                + (f" ({seconds['min']:.1f}-{seconds['max']:.1f})" if result["repeats"] > 1 else ""),
                f"{figures['tiles_per_second']:.0f}",
                f"{figures['throughput_vs_one_process']:.2f}",
                f"{figures['median_slide_seconds']['median']:.2f} s",
                ", ".join(f"{load:.2f}" for load in figures["load_average_before"]),
            ]
        )
    header = [
        "`--workers`",
        "wall (cluster start included)",
        "tiles/s",
        "throughput vs one process",
        "median slide",
        "load before",
    ]
    return (
        f"{data['slides']} generated slides of {width} x {height} px at {data['mpp']} um/px, "
        f"{tiles['min']:,}-{tiles['max']:,} tissue tiles each ({data['tiles_total']:,} in all), encoder "
        f"`{data['encoder']}`; target throughput >= {result['target_throughput_vs_one_process']}; "
        f"same regions and ROI in every configuration: {result['same_regions_and_roi']}.\n\n"
        + _table(header, rows)
        + "\n"
        + _source(result)
    )


def fault_cases__summary(result: dict) -> str:
    """How many of the hostile cases came out as they should."""
    rows = result["rows"]
    ok = sum(row["verdict"] == "ok" for row in rows)
    bad = [row["case"] for row in rows if row["verdict"] != "ok"]
    text = f"{ok} of {len(rows)} hostile cases ok"
    text += f"; not ok: {', '.join(bad)}" if bad else ""
    commit = str(result["commit"])[:12]
    return f"{text} (commit `{commit}`, {result['date']}; the table: [fault_cases.md](fault_cases.md)).\n"


def reopen__summary(result: dict) -> str:
    """File > Open of a saved run's ``care.json`` until its layers are drawn."""
    data = result["data"]
    size = data.get("level0_px")
    where = f"{size[0]:,} x {size[1]:,} px" if size else "generated"
    rows = [
        [
            str(number),
            f"{repeat['open_seconds']:.3f} s",
            f"{repeat['first_draw_seconds']:.3f} s",
            f"{repeat['reopen_seconds']:.3f} s",
            f"{repeat['again_seconds']:.3f} s",
            f"{repeat['first_layers_seconds']:.3f} s",
            f"{repeat['load_average_before']:.2f}",
        ]
        for number, repeat in enumerate(result["repeats"], start=1)
    ]
    first, again = result["reopen_seconds"], result["again_seconds"]
    reference = result["napari_first_layers_seconds"]
    header = [
        "repeat",
        "open (layers added)",
        "first drawn frame",
        "reopen, first file of a session",
        "reopen, napari warm",
        "napari's first two tiny layers",
        "load before",
    ]
    return (
        f"A run of {data['patches']:,} patches ({data['tile_px']}-px tiles at 20x) in {data['regions']:,} "
        f"regions and {data['groups']} groups on a {where} generated slide. Reopen as the first file of a "
        f"napari session: median {first['median']:.2f} s (max {first['max']:.2f}), of which napari's "
        f"one-time cost of its first image and labels layers is about {reference['median']:.2f} s; "
        f"with napari warm (a second run opened): median {again['median']:.2f} s (max "
        f"{again['max']:.2f}); target < {result['target_seconds']:g} s.\n\n"
        + _table(header, rows)
        + "\n"
        + _source(result)
    )


def review_classes__summary(result: dict) -> str:
    """``napari-care review`` by class of many polygons against a run of many patches."""
    data, review = result["data"], result["review"]
    rows = [[stage, f"{seconds:.2f} s"] for stage, seconds in review["stage_seconds"].items()]
    rows.append(["**all**", f"**{review['seconds']:.2f} s** (CPU {review['cpu_seconds']:.2f} s)"])
    return (
        f"{data['polygons']:,} annotation polygons against {data['patches']:,} patches in "
        f"{data['regions']:,} regions and {data['groups']} groups: "
        f"{review['agreement_rows']:,} agreement rows "
        f"({review['group_rows']} group rows), {review['class_by_group_rows']} class x group rows, pointing "
        f"game on the {review['pointing_on']}s; peak RSS {review['peak_rss_mib']:,.0f} MiB; target < "
        f"{result['target_seconds']:g} s.\n\n" + _table(["stage", "seconds"], rows) + "\n" + _source(result)
    )


def groups_panel__summary(result: dict) -> str:
    """The groups and corrections panel's edits on a 100k-patch run: seconds and stalls."""
    data = result["data"]
    rows = [
        [
            name,
            f"{edit['seconds_median']:.2f} s (max {edit['seconds_max']:.2f})",
            f"{edit['stall_ms_median']:.0f} ms (max {edit['stall_ms_max']:.0f})",
        ]
        for name, edit in result["edits"].items()
    ]
    worst = max(edit["stall_ms_max"] for edit in result["edits"].values())
    return (
        f"{result['repeats']} repeats on a run of {data['patches']:,} patches in "
        f"{data['regions']:,} regions; "
        f"longest stall over every edit {worst:.0f} ms (target < {result['stall_limit_ms']:.0f} ms; a plain "
        f"repaint of the window: {result['reference_repaint_ms']:.0f} ms).\n\n"
        + _table(["edit", "click to painted (median)", "longest event-loop stall (median)"], rows)
        + "\n"
        + _source(result)
    )


def read_gigapixel__summary(result: dict) -> str:
    """Uncached reads of the gigapixel slide: napari_care against OpenSlide."""
    slide, figures = result["slide"], result["figures"]
    rows = [
        [name, f"{stat['median']:.0f}", f"{stat['min']:.0f} - {stat['max']:.0f}"]
        for name, stat in figures.items()
    ]
    ratios = [[name, f"{value:.2f}"] for name, value in result["ratios"].items()]
    text = (
        f"Slide {slide['width']:,} x {slide['height']:,} px, {slide['bytes'] / 2**30:.2f} GiB "
        f"(fits in RAM: {slide['fits_in_ram']}; {slide['page_cache']}); tile cache limit "
        f"{result['tile_cache_limit_bytes']:,} bytes, {result['tile_cache_hits']} hits; "
        f"{result['repeats']} repeats.\n\n"
    )
    text += _table(["workload", "reads or tiles / s (median)", "min - max"], rows) + "\n"
    return text + _table(["ratio", "value"], ratios) + "\n" + _source(result)


def dask_levels__summary(result: dict) -> str:
    """Full-screen field reads through the dask levels against ``TiledLevel``."""
    rows = [
        [
            slide["slide"],
            str(level["level"]),
            f"{level['size'][0]:,} x {level['size'][1]:,}",
            f"{level['tiled_cold']['median']:.1f}",
            f"{level['dask_cold']['median']:.1f}",
            f"{level['ratio_cold']:.2f}",
            f"{level['tiled_warm']['median']:.1f}",
            f"{level['dask_warm']['median']:.1f}",
            f"{level['ratio_warm']:.2f}",
        ]
        for slide in result["slides"]
        for level in slide["levels"]
    ]
    header = ["slide", "level", "size", "TiledLevel cold ms", "dask cold ms", "ratio", "TiledLevel warm ms"]
    header += ["dask warm ms", "ratio"]
    text = _table(header, rows)
    worst, target = result["worst_ratio_cold"], result["target_ratio"]
    text += f"\nWorst cold ratio {worst:.2f} (target at most {target}).\n\n"
    return text + _source(result)
