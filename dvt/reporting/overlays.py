"""The report's `plots/` part: the tables behind DVC's top-level plots (dvc.yaml `plots:`), each one
chart with every run in it.

dvc.yaml cannot loop over the runs of params.yaml outside `stages`, so instead of one plot entry per
run file the report writes one long table per chart, with a `series` column naming the line
(a run, or a run's exit); the template .dvc/plots/series.json colours by `series` and dashes by DVC's
`rev`, so `dvc plots diff` overlays experiments on the same axes. Numbers are means over the seeds,
as everywhere in the report. `page()` is the HTML page `dvc plots show` fills (.dvc/plots/page.html,
in git; .dvc/config `plots.html_template`): DVC's own page loads Vega from a CDN and stays blank
offline; this one loads the Vega, Vega-Lite and Vega-Embed builds that Snakemake ships for its
reports, which the report copies into plots/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from dvt.atomic import write_text
from dvt.errors import DvtError, pipeline_module
from dvt.reporting.inputs import RunFiles

# The Vega libraries, in load order, from Snakemake's report assets (a pinned dependency already).
VEGA_SCRIPTS = ("vega/vega.js", "vega-lite/vega-lite.js", "vega-embed/vega-embed.js")


def accuracy_vs_gmacs(runs: Sequence[RunFiles]) -> pd.DataFrame:
    """Test top-1 against average GMACs per image: a cascade's budgets as a line, a one-exit run as a point."""
    parts = []
    for run in runs:
        if run.is_cascade:
            frame = run.budget.sort_values("gmacs")
            parts.append(pd.DataFrame({"series": run.name, "gmacs": frame["gmacs"].to_numpy(float),
                                       "top1": frame["accuracy"].to_numpy(float)}))
        else:
            parts.append(pd.DataFrame({"series": [run.name], "gmacs": [run.gmacs[0]], "top1": [run.top1[0]]}))
    return pd.concat(parts, ignore_index=True)


def calibration_top1(runs: Sequence[RunFiles]) -> pd.DataFrame:
    """Calibration top-1 per epoch, one line per exit of every run (imported weights: epoch 0 only)."""
    parts = []
    for run in runs:
        log = run.train_log
        for k in range(run.num_exits):
            column = f"top1_exit{k + 1}"
            if column in log:
                series = run.name if run.num_exits == 1 else f"{run.name} exit {k + 1}"
                parts.append(pd.DataFrame({"series": series, "epoch": log["epoch"].to_numpy(int),
                                           "top1": log[column].to_numpy(float)}))
    return pd.concat(parts, ignore_index=True)


def exit_shares(runs: Sequence[RunFiles]) -> pd.DataFrame:
    """Per cascade and exit, the share of test images (%) leaving there at each budget p."""
    parts = []
    for run in runs:
        if not run.is_cascade:
            continue
        frame = run.budget
        for k, grid in enumerate(run.grids):
            parts.append(pd.DataFrame({"series": f"{run.name} exit {k + 1} ({grid}x{grid})",
                                       "budget": frame["budget"].to_numpy(int),
                                       "share": 100 * frame[f"exit_fraction_{k}"].to_numpy(float)}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["series", "budget", "share"])


TABLES = {"accuracy_vs_gmacs.csv": accuracy_vs_gmacs, "calibration_top1.csv": calibration_top1,
          "exit_shares.csv": exit_shares}


# Where DVC's page (.dvc/plots/page.html) finds the report's copies of Vega: relative to the page DVC
# writes, dvc_plots/index.html in the repository (`dvc plots show` run there, without -o).
PAGE_SCRIPTS = "../reports/plots"


def vega_scripts() -> dict[str, str]:
    """The Vega libraries, by the file name the report gives each in plots/."""
    assets = pipeline_module("snakemake.assets", needed_for="the plots page (its Vega libraries)")
    folder = Path(assets.__file__).parent / "data"
    scripts = {}
    for name in VEGA_SCRIPTS:
        path = folder / name
        if not path.is_file():
            raise DvtError(f"{path} is missing: the installed Snakemake lacks its report assets; reinstall it "
                           "(`make install`)")
        scripts[Path(name).name] = path.read_text(encoding="utf-8")
    return scripts


def page() -> str:
    """DVC's plots page (.dvc/plots/page.html, in git, so that `dvc plots show` on a fresh clone finds it):
    Vega from the report's plots/ folder, and a line saying what to run where that folder is not there
    yet. `{plot_divs}` is where DVC puts the charts."""
    tags = "\n".join(f'<script src="{PAGE_SCRIPTS}/{Path(name).name}"></script>' for name in VEGA_SCRIPTS)
    return ("<!DOCTYPE html>\n<html>\n<head>\n<meta charset=\"utf-8\">\n<title>DVT: dvc plots</title>\n"
            "<!-- written by dvt.reporting.overlays.page(); DVC's own page loads Vega from a CDN -->\n"
            f"{tags}\n"
            "<style>body { font-family: sans-serif; } table { border-spacing: 15px; }</style>\n</head>\n<body>\n"
            '<p id="no-vega" hidden>No charts: the Vega libraries come with the report (reports/plots/*.js). '
            "Run <code>dvc pull</code> (or <code>dvc repro</code>), then <code>dvc plots show</code> again.</p>\n"
            '<script>if (typeof vegaEmbed === "undefined") document.getElementById("no-vega").hidden = false;</script>\n'
            "{plot_divs}\n</body>\n</html>\n")


def write(folder: Path, runs: Sequence[RunFiles]) -> list[str]:
    """Every table and the Vega libraries into `folder`; returns the file names."""
    for name, table in TABLES.items():
        write_text(folder / name, table(runs).to_csv(index=False, float_format="%.6g"))
    scripts = vega_scripts()
    for name, code in scripts.items():
        write_text(folder / name, code)
    return [*TABLES, *scripts]
