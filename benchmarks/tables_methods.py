"""Results tables of the method experiments: automatic group count, CARE's sensitivity, CARE's scaling."""

from __future__ import annotations

from tables_format import markdown_table, mean_sd, source_line


def auto_groups__test(result: dict) -> str:
    """The automatic number of groups on the test slides, per planted type count."""
    test = result["test"]
    rows = [
        [
            str(row["planted"]),
            str(row["slides"]),
            ", ".join(str(n) for n in row["chosen_n"]),
            f"{row['exact_rate']:.0%}",
            mean_sd(row["ari_chosen"]),
            mean_sd(row["ari_oracle"]),
            mean_sd(row["ari_region_ceiling"]),
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
            mean_sd(overall["ari_chosen"]),
            mean_sd(overall["ari_oracle"]),
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
        + markdown_table(header, rows)
        + "\n"
        + source_line(result)
    )


def auto_groups__development(result: dict) -> str:
    """Every candidate criterion on the development slides (what the choice saw)."""
    development = result["development"]
    rows = [
        [f"`{name}`", f"{c['exact_rate']:.0%}", mean_sd(c["ari_chosen"]), f"{c['mean_abs_error']:.2f}"]
        for name, c in development["candidates"].items()
    ]
    header = ["criterion@tolerance", "N = planted", "ARI at chosen N", "mean abs(N - planted)"]
    return (
        f"Development seeds {', '.join(str(s) for s in development['seeds'])} "
        f"({development['slides']} slides); chosen: `{development['chosen_candidate']}`.\n\n"
        + markdown_table(header, rows)
        + "\n"
        + source_line(result)
    )


def _care_sensitivity_value(value: float) -> str:
    return f"{value:g}"


def care_sensitivity__development(result: dict) -> str:
    """The one-at-a-time sweep of the training-free constants on the development slides."""
    development = result["development"]
    choices = development["choices"]
    rows = []
    for name, entries in development["sweep"].items():
        for entry in entries:
            marks = [
                word
                for word, on in (
                    ("default", entry["value"] == choices[name]["default"]),
                    ("**chosen**", entry["value"] == choices[name]["chosen"]),
                )
                if on
            ]
            rows.append(
                [
                    f"`{name}`",
                    _care_sensitivity_value(entry["value"]) + (f" ({', '.join(marks)})" if marks else ""),
                    mean_sd(entry["purity"]["all"], 3),
                    f"{entry['purity_gain_over_fixed']['all']['mean']:+.3f}",
                    f"{entry['boundary_recall']['all']['mean']:.3f}",
                    f"{entry['coherence']['all']['mean']:.3f}",
                    f"{entry['regions']['all']['mean']:.0f}",
                    mean_sd(entry["ari"]["all"], 3),
                    f"{entry['roi_share']['all']['mean']:.3f}",
                    f"{entry['regions_as_default_share']:.0%}",
                ]
            )
    header = [
        "constant",
        "value",
        "purity",
        "gain over fixed blocks",
        "boundary recall",
        "coherence",
        "regions",
        "group ARI",
        "ROI share",
        "regions as default",
    ]
    data = result["data"]
    seeds = development["seeds"]
    return (
        f"Development seeds {seeds[0]}-{seeds[-1]} ({development['slides']} slides, "
        f"{data['size_px'][0]} x {data['size_px'][1]} px at {data['mpp']} um/px, "
        f"{development['patches']['mean']:.0f} +- {development['patches']['sd']:.0f} patches). "
        "One constant varied at a time, the others at their defaults; means over the slides "
        "(purity and ARI: +- sd). Rule: "
        f"{result['rule']}.\n\n" + markdown_table(header, rows) + "\n" + source_line(result)
    )


def care_sensitivity__test(result: dict) -> str:
    """The default and the dev-chosen settings on the test slides, and whether each default held."""
    test = result["test"]
    names = {
        "default": "defaults",
        "dev_chosen": "dev-chosen (the rule)",
        "dev_chosen_k_default": "dev-chosen, k = 8 (supplementary)",
    }
    setting_rows = [
        [
            group,
            names.get(setting, setting),
            str(stats["purity"]["n"]),
            mean_sd(stats["purity"], 3),
            mean_sd(stats["boundary_recall"], 3),
            mean_sd(stats["coherence"], 3),
            f"{stats['regions']['mean']:.0f}",
            mean_sd(stats["ari"], 3),
        ]
        for group, by_setting in test["settings_compared"].items()
        for setting, stats in by_setting.items()
    ]
    setting_header = [
        "slides",
        "setting",
        "n",
        "purity",
        "boundary recall",
        "coherence",
        "regions",
        "group ARI",
    ]
    held_rows = []
    for name, row in test["held"].items():
        best_gain = row["test_best"] - row["test_default"]
        held_rows.append(
            [f"`{name}`", row["readout"].replace("_", " "), _care_sensitivity_value(row["default"])]
            + [
                f"{value}: {difference['mean']:+.3f} +- {difference['sd']:.3f}"
                for value, difference in row["test_value_minus_default"].items()
                if float(value) != row["default"]
            ]
            + [
                _care_sensitivity_value(row["dev_chosen"]),
                f"{_care_sensitivity_value(row['test_best_value'])} ({best_gain:+.4f})",
                "yes" if row["default_held"] else "**no**",
            ]
        )
    width = max(len(row) for row in held_rows)
    held_rows = [row[:-3] + [""] * (width - len(row)) + row[-3:] for row in held_rows]
    held_header = [
        "constant",
        "readout",
        "default",
        *["value: test - default"] * (width - 6),
        "dev-chosen",
        "best on test",
        "default held",
    ]
    chosen = result["development"]["chosen_setting"]
    changed = [f"`{n}={_care_sensitivity_value(v)}`" for n, v in chosen.items() if v != result["defaults"][n]]
    seeds = test["seeds"]
    return (
        f"Test seeds {seeds[0]}-{seeds[-1]} ({test['slides']} slides, 5 per layout, none seen by the choice; "
        f"{test['patches']['mean']:.0f} +- {test['patches']['sd']:.0f} patches). Dev-chosen setting: "
        + (", ".join(changed) if changed else "the defaults")
        + ". Mean +- sd over the slides. The third setting was "
        + test["settings_compared_note"].partition(": ")[2]
        + ".\n\n"
        + markdown_table(setting_header, setting_rows)
        + "\nEach constant on the test slides (reported, not chosen on): every other swept value minus the "
        "default, paired per slide (mean +- sd over the 15 slides); 'held' = no swept value beat the "
        "default by more than the tie tolerance (0.005).\n\n"
        + markdown_table(held_header, held_rows)
        + "\n"
        + source_line(result)
    )


def care_scaling__summary(result: dict) -> str:
    """CARE's run time against the number of patches."""
    names = list(result["seconds"])
    header = ["patches", "regions (training-free)"]
    for name in names:
        header += [f"{name} s", "x per step"]
    rows = []
    for index, n in enumerate(result["sizes"]):
        row = [f"{n:,}", f"{result['regions'][index]:,}"]
        for name in names:
            times = result["seconds"][name]
            step = f"x{times[index] / times[index - 1]:.1f}" if index else "-"
            row += [f"{times[index]:.3f}", step]
        rows.append(row)
    text = (
        f"{result['grid']}, D = {result['dim']}; best of {result['repeats_below_100k']} runs below "
        f"100k patches, one run at 100k; peak RSS of the process {result['peak_rss_mib']:,.0f} MiB; "
        f"load average {result['load_average_at_start'][0]:.2f} at the start.\n\n"
    )
    return text + markdown_table(header, rows) + "\n" + source_line(result)
