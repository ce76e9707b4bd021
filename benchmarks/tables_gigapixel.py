"""Results tables at gigapixel scale: reading, dask levels, tissue, peers, whole slide, viewer."""

from __future__ import annotations

from tables_format import markdown_table, mean_sd, source_line


def read_gigapixel__summary(result: dict) -> str:
    """Uncached reads of the gigapixel slide: napari_care against OpenSlide."""
    slide, figures = result["slide"], result["figures"]
    rows = [
        [
            name,
            f"{stat['median']:.0f}",
            f"{stat['min']:.0f} - {stat['max']:.0f}",
            f"{stat['cores_busy']:.2f}" if "cores_busy" in stat else "-",
        ]
        for name, stat in figures.items()
    ]
    ratios = [[name, f"{value:.2f}"] for name, value in result["ratios"].items()]
    text = (
        f"Slide {slide['width']:,} x {slide['height']:,} px, {slide['bytes'] / 2**30:.2f} GiB "
        f"(fits in RAM: {slide['fits_in_ram']}; {slide['page_cache']}); tile cache limit "
        f"{result['tile_cache_limit_bytes']:,} bytes, {result['tile_cache_hits']} hits; "
        f"{result['repeats']} repeats.\n\n"
    )
    header = ["workload", "reads or tiles / s (median)", "min - max", "cores busy (CPU / wall, median)"]
    text += markdown_table(header, rows) + "\n"
    return text + markdown_table(["ratio", "value"], ratios) + "\n" + source_line(result)


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
    text = markdown_table(header, rows)
    worst, target = result["worst_ratio_cold"], result["target_ratio"]
    text += f"\nWorst cold ratio {worst:.2f} (target at most {target}).\n\n"
    return text + source_line(result)


def tissue__summary(result: dict) -> str:
    """Share of each planted type's tiles the tissue mask finds, and its time, against LazySlide."""
    summary = result["generated_summary"]
    labels = list(summary)
    names = list(summary[labels[0]])
    tiles = {name: sum(r["shares"]["tiles"][name] for r in result["generated"]) for name in names}
    rows = [
        [name, f"{tiles[name]:,}"] + [mean_sd(summary[label][name]) for label in labels] for name in names
    ]
    seeds = result["seeds"]
    width, height = result["slide_size"]
    text = (
        f"{len(seeds)} generated slides (test seeds {seeds[0]}-{seeds[-1]}; the settings were chosen "
        f"on seeds {result['development_seeds'][0]}-{result['development_seeds'][-1]}), "
        f"{width:,} x {height:,} px at {result['mpp']} um/px with pen marks; a tile (224 px at "
        f"20x) is found when the mask covers {result['min_tissue']:.0%} of it. Share found, "
        f"mean +- sd over the slides:\n\n"
    )
    text += markdown_table(["planted type", "tiles", *labels], rows) + "\n"
    times = []
    for record in result["generated"] + ([result["gigapixel"]] if "gigapixel" in result else []):
        ours, theirs = record["ours"], record.get("lazyslide")
        row = [
            record["slide"],
            f"{ours['median_s']:.3f}",
            f"{ours['level']} (x{ours['level_downsample']:.0f})",
        ]
        if theirs:
            seen = f"{theirs['level']} (x{theirs['level_downsample']:.0f}) of {theirs['levels_seen']}"
            row += [f"{theirs['median_s']:.3f}", seen]
            row.append(f"{theirs['median_s'] / ours['median_s']:.2f}")
        else:
            row += ["-", "-", "-"]
        times.append(row)
    header = ["slide", "ours s (median)", "our level", "LazySlide s", "its level of levels seen"]
    header.append("LazySlide / ours")
    text += (
        f"Open + mask, median of {result['repeat']} for ours, of "
        f"{result['lazyslide_repeat_generated']} for LazySlide on the generated OME-TIFFs (it "
        f"sees one level there) and {result['repeat']} on the gigapixel SVS; page cache warm "
        "for both:\n\n"
    )
    text += markdown_table(header, times) + "\n"
    if "gigapixel" in result:
        giga = result["gigapixel"]["shares"]
        found = ", ".join(f"{name} {share:.3f}" for name, share in giga["ours"].items() if share is not None)
        text += f"Gigapixel slide, share found (ours): {found}.\n\n"
    start = result["load_average_at_start"][0]
    end = result["load_average_at_end_of_timings"][0]
    text += f"Load average {start:.2f} at the start, {end:.2f} at the end of the timings.\n\n"
    return text + source_line(result)


def tissue_development__sweep(result: dict) -> str:
    """The texture cue's settings on the development seeds (what the choice saw)."""
    summary = result["summary"]
    columns = ["fat", "glass (with dust, no pen)", "glass, no tissue in tile", "pen (glass under a stroke)"]
    rows = [
        [label.replace("=", " = ")] + [mean_sd(summary[label][name], 3) for name in columns]
        for label in summary
    ]
    seeds = result["development_seeds"]
    width, height = result["slide_size"]
    text = (
        f"Development seeds {seeds[0]}-{seeds[-1]}, {width:,} x {height:,} px with pen marks; each "
        "setting varied with the other at its default; share of tiles found, mean +- sd over the "
        f"slides. Rule: {result['rule']}.\n\n"
    )
    text += markdown_table(["setting", *columns], rows) + "\n"
    chosen = ", ".join(f"`{name}` = {value:g}" for name, value in result["chosen_by_rule"].items())
    in_code = ", ".join(f"`{name}` = {value:g}" for name, value in result["defaults_in_code"].items())
    text += f"Chosen by the rule: {chosen}; in the code: {in_code}.\n\n"
    return text + source_line(result)


def _peer_row(run: str, name: str, figures: dict) -> list[str]:
    """One contender of ``peers.json`` as a table row."""
    if "error" in figures:
        return [run, name, "-", "not run", "-", "-", "-", "-", figures["error"][:60]]
    cosine = figures.get("cosine_to_napari_care")
    rss = figures.get("peak_rss_mib")
    return [
        run,
        name,
        f"{figures['tiles']:,}",
        f"{figures['tiles_per_s']:.1f}",
        f"{figures['cpu_ms_per_tile']:.1f}",
        f"{figures['cores_busy']:.2f}",
        f"{rss:,.0f}" if rss else "-",
        f"{cosine['mean']:.4f} / {cosine['min']:.4f}" if cosine else "-",
        f"{figures['load_before'][0]:.1f} -> {figures['load_after'][0]:.1f}",
    ]


def peers__summary(result: dict) -> str:
    """napari_care, LazySlide and a CLAM-style OpenSlide loop on the gigapixel slide, same encoders."""
    slide = result["slide"]
    rows = []
    e2e = result.get("end_to_end_default")
    if e2e:
        for name, key in (("napari_care", "napari_care"), ("LazySlide", "lazyslide")):
            figures = e2e[key]
            own = figures.get("stages", {}).get("own_tiles")
            label = f"{name} (of its {own:,} tiles)" if own else name
            rows.append(_peer_row("`default`, end to end from the file", label, figures))
    same = result["same_tiles_default"]
    for name, key in (("napari_care", "napari_care"), ("LazySlide", "lazyslide"), ("CLAM-style", "clam")):
        rows.append(_peer_row("`default`, same tiles", name, same[key]))
    cnn = result["same_tiles_resnet18"]
    for i, (bare, end) in enumerate(zip(cnn["bare_forward"], cnn["napari_care_end_to_end"], strict=True)):
        rows.append(_peer_row("`resnet18`, same tiles", f"bare forward, pass {i + 1}", bare))
        rows.append(_peer_row("`resnet18`, same tiles", f"napari_care, pass {i + 1}", end))
    for name, key in (("LazySlide", "lazyslide"), ("CLAM-style", "clam")):
        rows.append(_peer_row("`resnet18`, same tiles", name, cnn[key]))
    header = ["run", "contender", "tiles", "tiles/s", "CPU-ms/tile", "cores busy", "peak RSS MiB"]
    header += ["cosine to napari_care (mean / min)", "load before -> after"]
    text = (
        f"Slide {slide['path'].rsplit('/', 1)[-1]}, {slide['bytes'] / 2**30:.2f} GiB, "
        f"{result['grid_tiles']:,} tissue tiles of {result['tile']}; page cache warm "
        f"(fits: {slide['fits_in_page_cache']}), "
        f"napari_care's tile cache ({slide['tile_cache_bytes'] / 2**20:.0f} MiB) cannot hold it; "
        f"batches of {result['batch_size']}; resnet18 input: {cnn['input']}; weights checksum "
        f"{cnn['weights_checksum']:.4f} in every contender. Shipped descriptor against napari_care's "
        f"on 256 tiles: max abs difference {result['shipped_descriptor_max_abs_diff']:.3g}.\n\n"
    )
    text += markdown_table(header, rows) + "\n"
    ratios = []
    for label, verdict in result["summary"].items():
        label = label.replace("same_tiles_default", "`default`, same tiles").replace("lazyslide", "LazySlide")
        label = label.replace("same_tiles_resnet18", "`resnet18`, same tiles").replace("clam", "CLAM-style")
        if isinstance(verdict, dict):
            met = "met" if verdict["met"] else "**missed**"
            passes = ", ".join(f"{value:.2f}" for value in verdict.get("pairs", []))
            pairs = f" (passes: {passes})" if passes else ""
            ratios.append([label, f"{verdict['ratio']:.2f}{pairs}", f">= {verdict['target']} ({met})"])
        else:
            ratios.append([label, "-" if verdict is None else f"{verdict:.2f}", ""])
    cpu = [
        bare["cpu_ms_per_tile"] / end["cpu_ms_per_tile"]
        for bare, end in zip(cnn["bare_forward"], cnn["napari_care_end_to_end"], strict=True)
    ]
    cpu_text = ", ".join(f"{value:.2f}" for value in cpu)
    ratios.append(["resnet18: bare forward CPU-ms / napari_care end-to-end CPU-ms per tile", cpu_text, ""])
    text += markdown_table(["ratio (tiles/s unless said)", "value", "target"], ratios) + "\n"
    profile = cnn.get("profile")
    if profile:
        reading, preprocess = profile["reading_only"], profile["preprocess_only"]
        bare_ms = ", ".join(f"{bare['cpu_ms_per_tile']:.1f}" for bare in cnn["bare_forward"])
        end_ms = ", ".join(f"{end['cpu_ms_per_tile']:.1f}" for end in cnn["napari_care_end_to_end"])
        text += (
            f"Profile of napari_care's resnet18 run, CPU-ms per tile: reading alone "
            f"{reading['cpu_ms_per_tile']:.2f}, timm eval transform alone "
            f"{preprocess['cpu_ms_per_tile']:.2f}, the network alone (bare forward) {bare_ms}; "
            f"end to end {end_ms}.\n\n"
        )
    start, end = result["load_average_at_start"][0], result["load_average_at_end"][0]
    text += f"Load average {start:.2f} at the start, {end:.2f} at the end.\n\n"
    return text + source_line(result)


def _target_value(figure: dict) -> str:
    """The measured value of one of ``whole_slide.json``'s targets, with its unit."""
    if "growth" in figure:
        return f"{figure['growth']:+.1%}"
    if "value_bytes" in figure:
        return f"{figure['value_bytes'] / 1e9:.2f} GB"
    return f"{figure['value_s']:.1f} s"


def _stage_cell(seconds: float, rss_bytes: int) -> str:
    """One stage of the staged run: its time and the highest RSS sampled in it ("-": too short to sample)."""
    return f"{seconds:.1f} s, " + (f"{rss_bytes / 1e9:.2f} GB" if rss_bytes else "-")


def whole_slide__summary(result: dict) -> str:
    """``napari-care segment`` of the gigapixel slide and of one 4x larger: wall, peak RSS, stages."""
    slides = result["slides"]
    rows = []
    for name, slide in slides.items():
        wall, peak, stages = slide["wall_s"], slide["peak_rss_bytes"], slide["stages_s"]
        loads = [run[key][0] for run in slide["runs"] for key in ("load_before", "load_after")]
        rows.append(
            [
                f"{name}: {slide['width']:,} x {slide['height']:,} px, {slide['bytes'] / 2**30:.2f} GiB",
                str(slide["repeats"]),
                f"{wall['median']:.1f} ({wall['min']:.1f} - {wall['max']:.1f})",
                f"{peak['max'] / 1e9:.2f}",
                f"{slide['tiles']:,}",
                f"{slide['tiles_per_s']:.0f}",
                " / ".join(f"{seconds:.1f}" for seconds in stages.values()),
                f"{min(loads):.1f} - {max(loads):.1f}",
            ]
        )
    first = next(iter(slides.values()))
    header = ["slide", "runs", "wall s, median (min - max)", "peak RSS GB (max)", "tiles", "tiles/s"]
    header += [" / ".join(first["stages_s"]) + " s (median)", "load average (1 min) over the runs"]
    text = (
        f"Fresh `napari-care segment SLIDE --out DIR` processes, default encoder, on "
        f"{result['machine']['cpus']} cores; every file fits in RAM and was read once beforehand "
        f"(page cache warm, not dropped). Peak RSS: the kernel's maximum resident set of the process.\n\n"
    )
    text += markdown_table(header, rows) + "\n"
    staged = {name: slide["staged"] for name, slide in slides.items() if "staged" in slide}
    if staged:
        stage_names = list(next(iter(staged.values()))["seconds"])
        stage_rows = [
            [stage]
            + [
                _stage_cell(figures["seconds"][stage], figures["sampled_peak_rss_in_stage_bytes"][stage])
                for figures in staged.values()
            ]
            for stage in stage_names
        ]
        header = ["stage (one more fresh process, core calls timed one by one)"]
        header += [f"{name}: time, highest RSS in the stage" for name in staged]
        text += markdown_table(header, stage_rows) + "\n"
    verdicts = [
        [target, _target_value(figure), "met" if figure["met"] else "**missed**"]
        for target, figure in result["targets"].items()
    ]
    text += markdown_table(["target", "value", "verdict"], verdicts) + "\n"
    start, end = result["load_average_at_start"][0], result["load_average_at_end"][0]
    text += f"Load average {start:.2f} at the start, {end:.2f} at the end.\n\n"
    return text + source_line(result)


def _frames_cell(frames: list[str], count: int) -> str:
    return "; ".join(f"`{frame}`" for frame in frames[:count]) or "none"


def _viewer_stall_rows(repeats: list[dict]) -> list[list[str]]:
    """For each of :data:`VIEWER_STALLS`, the longest stall over the repeats in which the watchdog
    got a sample (it samples only when it gets the GIL), and what was sampled in it."""
    rows = []
    for key, label in VIEWER_STALLS.items():
        stalls = [
            (stall, index)
            for index, figures in enumerate(repeats, 1)
            for stall in figures.get(f"{key}_causes", [])
        ]
        if not stalls:
            continue
        unsampled = sum(1 for stall, _ in stalls if not stall["samples"])
        stall, index = max(stalls, key=lambda pair: (pair[0]["samples"] > 0, pair[0]["ms"]))
        rows.append(
            [
                label,
                f"{stall['ms']:.0f} ms (repeat {index}), {stall['samples']} samples"
                + (f"; {unsampled} of the {len(stalls)} stalls listed had none" if unsampled else ""),
                _frames_cell(stall["innermost"], 3),
                _frames_cell(stall["frames"], 4),
                _frames_cell(stall.get("other_threads", []), 2),
            ]
        )
    return rows


VIEWER_STALLS = {  # the stalls whose causes the viewer table names: figure key -> what the user did
    "zoom_20x": "zoom to 20x",
    "pan_half": "half-screen pan at 20x",
    "zoom_out": "zoom out x2",
    "drag": "dragging (slide only)",
    "drag_layers": "dragging (CARE layers on)",
    "run_20x": "visible-field run at 20x",
    "whole_slide": "whole-slide run",
    "reference": "reference: plain repaints",
}


def viewer_gigapixel__summary(result: dict) -> str:
    """The viewer on the gigapixel and a real slide: open, pan and zoom, runs, stalls (median / max),
    and the frames the stall watchdog sampled in the longest stalls."""
    text = (
        f"Canvas {result['canvas']} under Xvfb (software OpenGL), {result['repeats']} fresh processes per "
        "slide; median / max over them. A stall is the longest gap between the ticks of a 5 ms timer; its "
        "target is 100 ms, or the plain-repaint reference + 30 ms where that is higher.\n\n"
    )
    for slide in result["slides"]:
        info, repeats = slide["slide"], slide["repeats"]
        width, height = info["dimensions"]
        loads = [r["load_start"][0] for r in repeats] + [r["load_end"][0] for r in repeats]
        whole = [r["whole_slide_patches"] for r in repeats if "whole_slide_patches" in r]
        mpp = info["mpp"][0] if info["mpp"] else None
        text += (
            f"**{info['name']}**: {width:,} x {height:,} px at {mpp} um/px, {info['levels']} levels, "
            f"{info['file_bytes'] / 2**20:,.0f} MiB (tile cache {info['tile_cache_bytes'] / 2**20:.0f} MiB; "
            f"page cache can hold the file: {info['page_cache_can_hold']}); "
            + (f"whole-slide run of {whole[0]:,} patches in {len(whole)} repeat(s); " if whole else "")
            + f"load average {min(loads):.1f} to {max(loads):.1f}.\n\n"
        )
        rows = []
        for key, row in slide["summary"].items():
            unit, digits = ("ms", 0) if key.endswith("_ms") else ("s", 2)
            target = "" if row["target"] is None else f"< {row['target']:.{digits}f} {unit}"
            verdict = ""
            if row["target"] is not None:
                verdict = "met" if row["met_max"] else "median only" if row["met_median"] else "missed"
            median, worst = f"{row['median']:.{digits}f} {unit}", f"{row['max']:.{digits}f} {unit}"
            rows.append([row["label"], median, worst, target, verdict])
        text += markdown_table(["figure", "median", "max", "target", "status"], rows) + "\n"
        stall_rows = _viewer_stall_rows(repeats)
        if stall_rows:
            header = [
                "longest sampled stall over 50 ms, while",
                "length, samples",
                "GUI thread: innermost frame (samples)",
                "GUI thread: frames seen most",
                "other busy threads: innermost < callers (samples)",
            ]
            text += (
                f"What the watchdog sampled in the longest stall of each kind ({info['name']}):\n\n"
                + markdown_table(header, stall_rows)
                + "\n"
            )
    return text + source_line(result)
