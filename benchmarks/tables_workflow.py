"""Results tables of a user's workflow: segmenting from features, cohorts, hostile inputs, reopening,
reviewing, correcting, GeoJSON exchange."""

from __future__ import annotations

from tables_format import markdown_table, source_line


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
        + markdown_table(["run", "median", "range"], rows)
        + "\n"
        + source_line(result)
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
        + markdown_table(header, rows)
        + "\n"
        + source_line(result)
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
        + markdown_table(header, rows)
        + "\n"
        + source_line(result)
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
        f"{result['target_seconds']:g} s.\n\n"
        + markdown_table(["stage", "seconds"], rows)
        + "\n"
        + source_line(result)
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
        + markdown_table(["edit", "click to painted (median)", "longest event-loop stall (median)"], rows)
        + "\n"
        + source_line(result)
    )


def geojson__summary(result: dict) -> str:
    """GeoJSON exchange of many regions and tiles: seconds and peak Python memory per step."""
    subjects = list(result["sizes"])
    steps: dict[str, dict[str, str]] = {}
    for row in result["steps"]:
        steps.setdefault(row["step"], {})[row["subject"]] = (
            f"{row['seconds']:.2f} s, {row['peak_mib']:.0f} MiB"
        )
    header = ["step"] + [f"{result['sizes'][name]:,} {name}" for name in subjects]
    rows = [[step] + [cells.get(name, "-") for name in subjects] for step, cells in steps.items()]
    grid = result["grid"]
    disk = ", ".join(f"{name} {mib:.1f} MiB" for name, mib in result["mib_on_disk"].items())
    text = (
        f"Regions traced from a {grid['side']} x {grid['side']} label grid of {grid['patches']:,} "
        f"patches; memory: {result['memory']}; load average {result['load_average_at_start'][0]:.2f} "
        f"at the start.\n\n"
    )
    return text + markdown_table(header, rows) + f"\nOn disk: {disk}.\n\n" + source_line(result)
