"""`dvt trend FOLDER...`: how DVT's findings move across finished pipelines that differ in training budget.

Each FOLDER is a finished pipeline: its params.yaml, the runs/ it trained and the report it rendered
(`make budget-study` builds one per configs/budget-*.yaml under studies/). Nothing is recomputed: per
folder the page takes the report's seed means (findings.json, metrics.json) and, per seed, the top-1s
in runs/<run>/seed<S>/metrics.json and the epoch times in train_log.csv. It writes, into one folder
(replaced as a whole, or left as it was):

  trend.json   every number, per folder and per seed
  trend.md     the table (rendered from report.dir/templates/trend.md.j2) and which findings hold where
  trend.png/.svg  the headline quantities against the images each model saw

The x axis is images seen per model (epochs x training images per epoch, from train_log.csv), so folders
that differ in epochs, train.subset or the dataset's size fall on one axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from dvt.atomic import atomic_dir, write_json, write_text
from dvt.errors import DvtError
from dvt.reporting import pages
from dvt.reporting.trend import QUANTITIES, Point, figure, read_point, table


def run(folders: Sequence[str], *, out: str, templates: str = "reports/templates") -> list[Point]:
    """Read every folder, then write trend.json, trend.md and the figure into `out` (one atomic swap)."""
    if len(folders) < 2:
        raise DvtError("give at least two finished pipelines (folders) to compare")
    points = sorted((read_point(Path(f)) for f in folders), key=lambda p: (p.images_per_model, p.folder))
    env = pages.environment(Path(templates))
    context = table(points)
    page = pages.render(env, "trend.md", context)
    with atomic_dir(out) as tmp:
        write_json(tmp / "trend.json", {"quantities": QUANTITIES, "per_doubling": context["slopes"],
                                         "paper_cost_share": context["paper_cost_share"], "points": context["points"]})
        write_text(tmp / "trend.md", page)
        figure(tmp, points, paper_cost_share=context["paper_cost_share"])
    print(f"dvt trend: {len(points)} pipelines -> {out}/trend.md, trend.json, trend.png, trend.svg")
    return points
