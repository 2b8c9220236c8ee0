"""The markdown pages: what each template is given, and the Jinja environment that formats numbers.

Templates (reports/templates/*.md.j2) receive raw numbers and format them with the filters below, so
how a number is printed is decided in one place; an undefined name is an error (StrictUndefined).
A number that does not exist (DVT never reaches an accuracy, a cost outside its curve) is None and
prints as a dash.
"""

from __future__ import annotations

import math
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import jinja2
import yaml

from dvt.config import Config, to_dict
from dvt.errors import DvtError
from dvt.reporting import compare
from dvt.reporting.compare import Ablation, Roles, VsCost, VsSpeed
from dvt.reporting.gallery import Picks
from dvt.reporting.inputs import RunFiles
from dvt.reporting.reference import Reference, Setting

UNIT = "GFLOPs (multiply-adds)"
DATASET_NAMES = {"cluttered-fashion-mnist": "cluttered Fashion-MNIST", "fashion-mnist": "Fashion-MNIST",
                 "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet", "folder": "image folder",
                 "synthetic": "synthetic images"}
DASH = "—"
# Versions recorded in index.md: what computed and drew the numbers.
PACKAGES = ("torch", "timm", "numpy", "pandas", "matplotlib", "jinja2", "dvt")


def _fmt(spec: str, suffix: str = "") -> Callable[[float | None], str]:
    def fmt(x: float | None) -> str:
        return DASH if x is None or not math.isfinite(x) else f"{x:{spec}}{suffix}"
    return fmt


def _pct_pm(x: float | None, std: float | None = None) -> str:
    """Top-1 with its seed standard deviation where there are several seeds: '68.89 ± 0.41'."""
    return FILTERS["pct"](x) + ("" if std is None or x is None else f" ± {std:.2f}")


def _pct_each(values: tuple[float, ...], stds: tuple[float, ...] | None = None) -> str:
    """One top-1 per exit, each with its seed standard deviation where there is one: 'a / b / c'."""
    return " / ".join(_pct_pm(v, None if stds is None else s) for v, s in zip(values, stds or values))


FILTERS: dict[str, Callable[..., str]] = {
    "pct": _fmt(".2f"),  # top-1, percent
    "share": lambda x: _fmt(".2f")(None if x is None else 100 * x),  # a fraction, as percent
    "gmacs": _fmt(".4g"),  # GMACs: 4 significant digits, whatever the model size
    "paper_gmacs": _fmt(".2f"),  # the paper prints GFLOPs with 2 decimals
    "times": _fmt(".2f", "×"),  # speed-up ratios
    "ratio": _fmt(".2f"),  # measured / ideal
    "ips": _fmt(".0f"),  # images per second
    "signed": _fmt("+.2f"),  # accuracy gains, points
    "millions": _fmt(".3f"),  # parameters, M
    "num": _fmt(".3g"),  # a quantity of any kind (dvt trend's rows)
    "slope": _fmt("+.3g"),  # its change per doubling
}


def environment(templates: Path) -> jinja2.Environment:
    if not sorted(templates.glob("*.md.j2")):
        raise DvtError(f"{templates} holds no *.md.j2 templates: the report is rendered from "
                       "report.dir/templates (the repository's reports/templates)")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False)
    env.filters.update(FILTERS, pct_pm=_pct_pm, pct_each=_pct_each)
    env.globals["DASH"] = DASH
    return env


def render(env: jinja2.Environment, page: str, context: dict[str, Any]) -> str:
    try:
        return env.get_template(f"{page}.j2").render(**context)
    except jinja2.TemplateNotFound as err:
        raise DvtError(f"template {err.name} is missing from the report templates") from None
    except (jinja2.TemplateSyntaxError, jinja2.UndefinedError) as err:
        raise DvtError(f"template {page}.j2: {err}") from None


def grid_name(grids: tuple[int, ...]) -> str:
    return " → ".join(f"{g}x{g}" for g in grids)


def common(config: Config, setting: Setting, roles: Roles, reference: Reference) -> dict[str, Any]:
    """What every page gets."""
    seeds = list(config.seeds)
    seed_note = (f"Every number of ours is the mean over {len(seeds)} seeds ({', '.join(map(str, seeds))}); "
                 "± gives the sample standard deviation over them." if len(seeds) > 1 else "")
    return {"unit": UNIT, "dataset": DATASET_NAMES[config.data.dataset], "backbone": config.model.backbone,
            "image_size": setting.image_size, "dvt": roles.dvt, "paper": reference.paper, "grid_name": grid_name,
            "seeds": seeds, "seed_note": seed_note, "pick_note": pick_note(roles)}


def pick_note(roles: Roles) -> str:
    """Which cascade the paper's DVT is, and that the others follow: said on every page that has cascades."""
    if roles.dvt is None:
        return ""
    spec = roles.dvt.spec
    why = ("the first cascade in params.yaml with feature and relation reuse" if spec.feature_reuse
           and spec.relation_reuse else "the first cascade in params.yaml (none has both reuses)")
    note = f"The paper's DVT here is `{roles.dvt.name}` ({grid_name(roles.dvt.grids)}), {why}."
    if roles.others:
        names = ", ".join(f"`{v.dvt.name}`" for v in roles.others)
        note += f" Every other cascade follows it in its own section: {names}."
    return note


def describe(run: RunFiles) -> str:
    """A cascade in a few words: its grids, its backbone and its reuse."""
    switches = (run.spec.feature_reuse, run.spec.relation_reuse)
    reuse = next(words for _, words, *setting in compare.REUSE_SETTINGS if tuple(setting) == switches)
    return f"{grid_name(run.grids)}, `{run.backbone}`, {reuse}"


def table1(reference: Reference, setting: Setting, singles: tuple[RunFiles, ...],
           baselines: tuple[RunFiles, ...] = ()) -> dict[str, Any]:
    paper = reference.table1
    same_setting = paper.setting == setting
    rows = [{"run": r.name, "grid": r.grids[0], "gmacs": r.gmacs[0], "params_m": r.params / 1e6,
             "top1": r.top1[0], "top1_std": r.top1_std[0] if r.top1_std else None,
             "paper": paper.row(r.grids[0]) if same_setting else None} for r in singles]
    spread = None
    if len(singles) >= 2:
        small, large = singles[0], singles[-1]
        spread = {"small": small.grids[0], "large": large.grids[0], "more": large.top1[0] - small.top1[0],
                  "cost": large.gmacs[0] / small.gmacs[0]}
    by_grid = sorted(paper.rows, key=lambda r: r.grid)
    paper_spread = {"small": by_grid[0].grid, "large": by_grid[-1].grid,
                    "more": by_grid[-1].top1 - by_grid[0].top1, "cost": by_grid[-1].gmacs / by_grid[0].gmacs}
    # The paper's numbers go beside ours only for the same setting and token grids.
    cnns = [{"run": r.name, "backbone": r.backbone, "gmacs": r.gmacs[0], "params_m": r.params / 1e6,
             "top1": r.top1[0], "top1_std": r.top1_std[0] if r.top1_std else None} for r in baselines]
    return {"rows": rows, "cnns": cnns, "official": any(r["paper"] for r in rows), "same_setting": same_setting,
            "table1": paper, "spread": spread, "paper_spread": paper_spread}


def table2(reference: Reference, roles: Roles, speeds: dict[str, list[VsSpeed]]) -> dict[str, Any]:
    """A section per cascade (the paper's DVT first): its measured curve against the one-exit ViTs of its
    backbone."""
    sections, involved = [], []
    for view in roles.views:
        dvt = view.dvt
        runs = [dvt, *view.singles]  # the only runs this section reads
        involved += [r for r in runs if r not in involved]
        dynamic = sorted(dvt.speed["dynamic"].values(), key=lambda d: d["budget"]) if dvt.speed else []
        sections.append({"dvt": dvt, "words": describe(dvt), "vs": speeds.get(dvt.name, []),
                         "points": compare.speed_curve(dvt), "dynamic": dynamic,
                         "standalone": dvt.speed["static"]["standalone"] if dvt.speed else None,
                         "singles": [r.name for r in view.singles]})
    return {"setups": compare.speed_setups(involved), "sections": sections,
            "missing": [r.name for r in involved if r.speed is None], "table2": reference.table2}


def table3(reference: Reference, roles: Roles, costs: dict[str, list[VsCost]]) -> dict[str, Any]:
    """A section per cascade (the paper's DVT first): its budgeted curve against the one-exit ViTs of its
    backbone."""
    sections = []
    for view in roles.views:
        g, a = view.dvt.curve()
        sections.append({"dvt": view.dvt, "words": describe(view.dvt), "vs": costs.get(view.dvt.name, []),
                         "curve": {"min_gmacs": float(g.min()), "max_gmacs": float(g.max()), "best": float(a.max())}})
    return {"sections": sections, "table3": reference.table3, "fig6": reference.fig6_speedups,
            "dataset_names": DATASET_NAMES}


def ablation(reference: Reference, setting: Setting, results: dict[str, Ablation]) -> dict[str, Any]:
    """One table per set of reuse siblings (report.Report.ablation); the paper's released per-exit numbers
    beside the one on their grids."""
    first = next(iter(results.values()), None)
    matched = reference.per_exit_for(setting, first.grids) if first is not None else None
    return {"ablations": list(results.values()), "per_exit": matched, "per_exit_all": reference.per_exit,
            "per_exit_source": reference.per_exit_source, "per_exit_grids": reference.per_exit_setting[2]}


def index(config: Config, *, runs: dict[str, RunFiles], gallery: Picks | None, paper_overlay: bool,
          git_commit: str | None, has_policies: bool = False) -> dict[str, Any]:
    if gallery is not None:
        note = ""
    elif config.report.gallery_size == 0:
        note = "No gallery: report.gallery_size is 0."
    else:
        note = "No gallery: params.yaml has no DVT cascade whose exits could sort the test images."
    return {
        "runs_dir": config.runs_dir, "gallery": gallery, "gallery_note": note, "paper_overlay": paper_overlay,
        "has_policies": has_policies,
        "runs": [{"name": name, **to_dict(spec)} for name, spec in config.runs.items()],
        "params_yaml": yaml.safe_dump(config.to_dict(), sort_keys=False),
        "git_commit": git_commit, "python": platform.python_version(),
        "packages": {name: metadata.version(name) for name in PACKAGES},
        "setups": compare.speed_setups(list(runs.values())),
    }
