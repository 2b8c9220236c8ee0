"""Cross-run comparisons: DVT against the one-exit runs, and the four reuse settings against each other.

* Matched cost (Table 3, the speed-up annotations of Fig. 6): DVT's top-1 at a one-exit run's GMACs,
  the GMACs DVT needs for its top-1, and their ratio. Read off DVT's budgeted curve (budget.csv plus
  its two limits) by linear interpolation; outside the curve's range the answer is None (no
  extrapolation).
* Against a family (Fig. 6): DVT's curve against the accuracy-cost front of one-exit models of other
  depths on its last grid, over the costs both reach, and at the top-1 of the family's most accurate
  member DVT reaches.
* Matched throughput (Table 2): the same on measured speed: DVT's curve is its timed early-exit budgets
  (speed.json, accuracy from budget.csv) plus the static first exit and whole cascade (everyone leaves
  at exit 1 / at the last exit), read in seconds per image.
* Ablation: a cascade's reuse siblings (the same model and grids), one per (feature reuse, relation
  reuse) setting, compared at a few named costs inside the range all of them cover.

Every comparison is made for every cascade of params.yaml, each against the runs of its own view
(`Roles`); "DVT" below is whichever cascade a comparison is about.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dvt.reporting.inputs import RunFiles
from dvt.thresholds import accuracy_at_gmacs, gmacs_for_accuracy, mean_accuracy

# (key, words, feature reuse, relation reuse); the first is the paper's DVT.
REUSE_SETTINGS = (
    ("both", "feature and relation reuse", True, True),
    ("feature", "feature reuse only", True, False),
    ("relation", "relation reuse only", False, True),
    ("none", "no reuse", False, False),
)
# Where in the cost range shared by all reuse settings they are compared (named by these keys).
ABLATION_COSTS = (("low", 0.25), ("mid", 0.5), ("high", 0.75))


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


@dataclass(frozen=True)
class Roles:
    """Which run plays which part beside one cascade (`dvt`): the one-exit ViTs of its backbone (by grid),
    its reuse siblings (the ablation), the reference CNNs and the family of depths on its last grid.

    `assign_roles` gives the view of the paper's DVT, the first cascade in params.yaml with both reuses
    (else the first cascade), and in `others` the same view of every other cascade, in params.yaml's order.
    """

    singles: tuple[RunFiles, ...]
    dvt: RunFiles | None
    ablation: dict[str, RunFiles | None]  # REUSE_SETTINGS key -> run, None when params.yaml has none
    baselines: tuple[RunFiles, ...] = ()
    # Fig. 6's comparison: the one-exit ViTs on DVT's last grid, of its backbone and of others (other
    # depths or widths, runs.<run>.backbone); empty unless at least one has another backbone.
    family: tuple[RunFiles, ...] = ()
    others: tuple[Roles, ...] = ()

    @property
    def views(self) -> tuple[Roles, ...]:
        """The paper's DVT's view, then every other cascade's; empty without a cascade."""
        return ((self,) if self.dvt is not None else ()) + self.others

    @property
    def leads(self) -> tuple[Roles, ...]:
        """One view per set of reuse siblings: the cascade the findings are about (the paper's DVT for its
        own set; for another set, its first cascade with both reuses, else its first)."""
        out: list[Roles] = []
        for view in self.views:
            i = next((i for i, lead in enumerate(out) if _siblings(view.dvt, lead.dvt)), None)
            if i is None:
                out.append(view)
            elif i > 0 and _both(view.dvt) and not _both(out[i].dvt):  # (the paper's DVT stays its set's lead)
                out[i] = view
        return tuple(out)

    @property
    def run_names(self) -> dict[str, list[str]]:
        """Every view's runs by part (each name once): what the Snakefile makes before a report part."""
        parts: dict[str, list[str]] = {"cascades": [], "leads": [], "singles": [], "ablation": [], "family": []}
        for view in self.views:
            parts["cascades"].append(view.dvt.name)
            parts["singles"] += [r.name for r in view.singles]
            parts["ablation"] += [r.name for r in view.ablation.values() if r is not None]
            parts["family"] += [r.name for r in view.family]
        parts["leads"] = [view.dvt.name for view in self.leads]
        parts["baselines"] = [r.name for r in self.baselines]
        return {k: list(dict.fromkeys(v)) for k, v in parts.items()}


def _both(run: RunFiles) -> bool:
    return run.spec.feature_reuse and run.spec.relation_reuse


def _siblings(a: RunFiles, b: RunFiles) -> bool:
    """The same cascade but for its two reuse switches (and where its weights start from)."""
    def model(r: RunFiles) -> tuple:
        s = r.spec
        return (r.backbone, s.grids, s.timm)
    return model(a) == model(b)


def assign_roles(runs: dict[str, RunFiles]) -> Roles:
    """From params.yaml alone: no file is read."""
    cascades = [r for r in runs.values() if r.is_cascade]
    both = [r for r in cascades if _both(r)]
    dvt = (both or cascades or [None])[0]
    baselines = tuple(r for r in runs.values() if r.is_baseline)
    if dvt is None:
        one_exit = [r for r in runs.values() if not r.is_cascade and not r.is_baseline]
        backbone = next((r.config.model.backbone for r in one_exit), None)
        singles = tuple(sorted((r for r in one_exit if r.backbone == backbone), key=lambda r: r.grids[0]))
        return Roles(singles=singles, dvt=None, ablation={key: None for key, *_ in REUSE_SETTINGS},
                     baselines=baselines)
    others = tuple(_view(runs, r, baselines) for r in cascades if r is not dvt)
    return dataclasses.replace(_view(runs, dvt, baselines), others=others)


def _view(runs: dict[str, RunFiles], dvt: RunFiles, baselines: tuple[RunFiles, ...]) -> Roles:
    """One cascade's roles. Its singles (Table 1's grid family) are the one-exit ViTs of its backbone."""
    one_exit = [r for r in runs.values() if not r.is_cascade and not r.is_baseline]
    singles = tuple(sorted((r for r in one_exit if r.backbone == dvt.backbone), key=lambda r: r.grids[0]))
    family = tuple(r for r in one_exit if r.grids[0] == dvt.grids[-1])
    if all(r.backbone == dvt.backbone for r in family):
        family = ()
    ablation: dict[str, RunFiles | None] = {}
    for key, _, feature, relation in REUSE_SETTINGS:
        if (dvt.spec.feature_reuse, dvt.spec.relation_reuse) == (feature, relation):
            ablation[key] = dvt
            continue
        same = [r for r in runs.values() if r.is_cascade and _siblings(r, dvt)
                and (r.spec.feature_reuse, r.spec.relation_reuse) == (feature, relation)]
        ablation[key] = same[0] if same else None
    return Roles(singles=singles, dvt=dvt, ablation=ablation, baselines=baselines, family=family)


@dataclass(frozen=True)
class VsCost:
    """DVT against one one-exit run at matched GMACs and at matched top-1."""

    run: str
    grid: int
    gmacs: float
    top1: float
    dvt_top1_at_gmacs: float | None
    dvt_gmacs_at_top1: float | None
    speedup: float | None  # gmacs / dvt_gmacs_at_top1

    @property
    def gain(self) -> float | None:
        return None if self.dvt_top1_at_gmacs is None else self.dvt_top1_at_gmacs - self.top1


def vs_cost(dvt: RunFiles, single: RunFiles) -> VsCost:
    g, a = dvt.curve()
    gmacs, top1 = single.gmacs[0], single.top1[0]
    need = _num(gmacs_for_accuracy(g, a, top1))
    return VsCost(run=single.name, grid=single.grids[0], gmacs=gmacs, top1=top1,
                  dvt_top1_at_gmacs=_num(accuracy_at_gmacs(g, a, gmacs)), dvt_gmacs_at_top1=need,
                  speedup=_ratio(gmacs, need))


@dataclass(frozen=True)
class Member:
    run: str
    backbone: str
    gmacs: float
    top1: float


@dataclass(frozen=True)
class VsFamily:
    """DVT's budgeted curve against the accuracy-cost front of a family of one-exit models (Fig. 6).

    The front joins, cheapest first, the members that beat every cheaper member (linear between them,
    as the paper draws the T2T-ViT family); a member some cheaper one beats is off it. DVT is compared
    with it over the costs both reach, [lo, hi], and at the accuracy of the most accurate member DVT's
    curve reaches (`matched`).
    """

    members: tuple[Member, ...]  # cheapest first
    front: tuple[Member, ...]
    lo: float | None
    hi: float | None
    share_above: float | None  # of [lo, hi] where DVT's curve is above the front
    mean_gap: float | None  # DVT minus the front, averaged over [lo, hi] (points)
    matched: Member | None
    dvt_gmacs_at_matched_top1: float | None

    @property
    def cost_share(self) -> float | None:
        return None if self.matched is None else _ratio(self.dvt_gmacs_at_matched_top1, self.matched.gmacs)


def vs_family(dvt: RunFiles, family: tuple[RunFiles, ...], points: int = 1024) -> VsFamily | None:
    """None without a family (Roles.family)."""
    if not family:
        return None
    members = tuple(sorted((Member(r.name, r.backbone, r.gmacs[0], r.top1[0]) for r in family),
                           key=lambda m: (m.gmacs, -m.top1)))
    front = []
    for m in members:
        if not front or m.top1 > front[-1].top1:
            front.append(m)
    g, a = dvt.curve()
    fg, fa = np.array([m.gmacs for m in front]), np.array([m.top1 for m in front])
    lo, hi = max(float(g.min()), float(fg[0])), min(float(g.max()), float(fg[-1]))
    share = gap = None
    if lo <= hi:
        costs = np.linspace(lo, hi, points)
        share = float(np.mean(accuracy_at_gmacs(g, a, costs) > accuracy_at_gmacs(fg, fa, costs)))
        gap = _num(mean_accuracy(g, a, lo, hi) - mean_accuracy(fg, fa, lo, hi))
    else:  # no cost both reach
        lo = hi = None
    reachable = [m for m in members if m.top1 <= float(a.max())]
    matched = max(reachable, key=lambda m: m.top1) if reachable else None
    need = None if matched is None else _num(gmacs_for_accuracy(g, a, matched.top1))
    return VsFamily(members=members, front=tuple(front), lo=lo, hi=hi, share_above=share, mean_gap=gap,
                    matched=matched, dvt_gmacs_at_matched_top1=need)


@dataclass(frozen=True)
class SpeedPoint:
    """One measured operating point of DVT: what it is, img/s, test top-1, expected GMACs."""

    label: str
    img_per_s: float
    top1: float
    gmacs: float


def speed_curve(dvt: RunFiles) -> list[SpeedPoint]:
    """DVT's measured (throughput, top-1) points, cheapest first; empty without speed.json."""
    if dvt.speed is None:
        return []
    exits, top1, last = dvt.speed["static"]["exits"], dvt.top1, dvt.num_exits
    points = [SpeedPoint("everyone leaves at exit 1", exits["exit1"]["img_per_s"], top1[0],
                         exits["exit1"]["gmacs"])]
    for d in sorted(dvt.speed["dynamic"].values(), key=lambda d: d["budget"]):
        points.append(SpeedPoint(f"budget p = {d['budget']}", d["img_per_s"], d["test"]["accuracy"],
                                 d["test"]["gmacs"]))
    points.append(SpeedPoint(f"everyone runs to exit {last}", exits[f"exit{last}"]["img_per_s"], top1[-1],
                             exits[f"exit{last}"]["gmacs"]))
    return points


@dataclass(frozen=True)
class VsSpeed:
    """DVT against one one-exit run at matched measured throughput and at matched top-1."""

    run: str
    grid: int
    img_per_s: float
    top1: float
    dvt_top1_at_img_per_s: float | None
    dvt_img_per_s_at_top1: float | None
    speedup: float | None  # measured: dvt_img_per_s_at_top1 / img_per_s
    ideal_speedup: float | None  # what GMACs promise at the same top-1 (VsCost.speedup)

    @property
    def gain(self) -> float | None:
        return None if self.dvt_top1_at_img_per_s is None else self.dvt_top1_at_img_per_s - self.top1

    @property
    def efficiency(self) -> float | None:
        """Measured over ideal speed-up: 1 = the saved multiply-adds are saved time."""
        return _ratio(self.speedup, self.ideal_speedup)


def vs_speed(dvt: RunFiles, single: RunFiles) -> VsSpeed | None:
    """None when either run has no speed.json."""
    points = speed_curve(dvt)
    if not points or single.speed is None:
        return None
    seconds = np.array([1.0 / p.img_per_s for p in points])  # time per image: a cost, like GMACs
    acc = np.array([p.top1 for p in points])
    ips, top1 = float(single.speed["static"]["cascade"]["img_per_s"]), single.top1[0]
    need = _num(gmacs_for_accuracy(seconds, acc, top1))
    dvt_ips = None if need is None else 1.0 / need
    return VsSpeed(run=single.name, grid=single.grids[0], img_per_s=ips, top1=top1,
                   dvt_top1_at_img_per_s=_num(accuracy_at_gmacs(seconds, acc, 1.0 / ips)),
                   dvt_img_per_s_at_top1=dvt_ips, speedup=_ratio(dvt_ips, ips),
                   ideal_speedup=vs_cost(dvt, single).speedup)


def speed_setups(runs: list[RunFiles]) -> list[dict[str, Any]]:
    """The distinct (device, threads, batch, torch) the speed.json files were measured with."""
    seen: list[dict[str, Any]] = []
    for r in runs:
        if r.speed is None:
            continue
        setup = {k: r.speed[k] for k in ("device", "device_name", "threads", "batch_size", "torch", "amp")}
        if setup not in seen:
            seen.append(setup)
    return seen


@dataclass(frozen=True)
class AblationRow:
    key: str
    words: str
    feature_reuse: bool
    relation_reuse: bool
    run: RunFiles | None
    top1_at: tuple[float | None, ...]  # at Ablation.costs
    best_top1: float | None
    best_gmacs: float | None


@dataclass(frozen=True)
class Ablation:
    lead: str  # the cascade the set is named by (Roles.leads)
    grids: tuple[int, ...]
    backbone: str
    costs: tuple[float, ...]  # the named GMACs, one per ABLATION_COSTS entry
    rows: tuple[AblationRow, ...]

    @property
    def missing(self) -> list[AblationRow]:
        return [r for r in self.rows if r.run is None]


def compare_reuse(roles: Roles) -> Ablation | None:
    """None without any cascade run."""
    if roles.dvt is None:
        return None
    present = [r for r in roles.ablation.values() if r is not None]
    curves = {r.name: r.curve() for r in present}
    # The cost range every present setting covers; each named cost is rounded to 3 significant digits.
    lo = max(float(g.min()) for g, _ in curves.values())
    hi = min(float(g.max()) for g, _ in curves.values())
    costs = tuple(float(f"{lo + f * (hi - lo):.3g}") for _, f in ABLATION_COSTS)
    rows = []
    for key, words, feature, relation in REUSE_SETTINGS:
        run = roles.ablation[key]
        top1_at: tuple[float | None, ...] = (None,) * len(costs)
        best_top1 = best_gmacs = None
        if run is not None:
            g, a = curves[run.name]
            top1_at = tuple(_num(accuracy_at_gmacs(g, a, c)) for c in costs)
            best = int(np.argmax(a))
            best_top1, best_gmacs = float(a[best]), float(g[best])
        rows.append(AblationRow(key=key, words=words, feature_reuse=feature, relation_reuse=relation, run=run,
                                top1_at=top1_at, best_top1=best_top1, best_gmacs=best_gmacs))
    return Ablation(lead=roles.dvt.name, grids=roles.dvt.grids, backbone=roles.dvt.backbone, costs=costs,
                    rows=tuple(rows))


def comparisons(*, dataset: str, seeds: int, roles: Roles, costs: dict[str, list[VsCost]],
                speeds: dict[str, list[VsSpeed]], ablation: dict[str, Ablation],
                family: dict[str, VsFamily | None]) -> dict[str, Any]:
    """reports/comparisons.json: every comparison of Tables 2-3 and the ablation (means over `seeds` seeds).
    Each argument maps a cascade to its comparisons; the paper's DVT's sit at the top level, every other
    cascade's under "other_cascades"."""
    main = roles.dvt.name if roles.dvt else None

    def one(name: str) -> dict[str, Any]:
        return _view_comparisons(costs.get(name, []), speeds.get(name, []), ablation.get(name), family.get(name))

    out: dict[str, Any] = {"dataset": dataset, "dvt_run": main, "seeds": seeds, **one(main or "")}
    others = {v.dvt.name: one(v.dvt.name) for v in roles.others}
    return out | ({"other_cascades": others} if others else {})


def _view_comparisons(costs: list[VsCost], speeds: list[VsSpeed], ablation: Ablation | None,
                      family: VsFamily | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["matched_gmacs"] = {c.run: {"gmacs": c.gmacs, "top1": c.top1, "dvt_top1_at_gmacs": c.dvt_top1_at_gmacs,
                                    "dvt_gmacs_at_top1": c.dvt_gmacs_at_top1, "speedup": c.speedup}
                            for c in costs}
    out["matched_throughput"] = {s.run: {"img_per_s": s.img_per_s, "top1": s.top1,
                                         "dvt_top1_at_img_per_s": s.dvt_top1_at_img_per_s,
                                         "dvt_img_per_s_at_top1": s.dvt_img_per_s_at_top1, "speedup": s.speedup,
                                         "ideal_speedup": s.ideal_speedup, "efficiency": s.efficiency}
                                 for s in speeds}
    if family is not None:
        out["family"] = {
            "members": {m.run: {"backbone": m.backbone, "gmacs": m.gmacs, "top1": m.top1,
                                "on_front": m in family.front} for m in family.members},
            "gmacs_range": [family.lo, family.hi], "share_above_front": family.share_above,
            "mean_gap": family.mean_gap, "matched": family.matched.run if family.matched else None,
            "dvt_gmacs_at_matched_top1": family.dvt_gmacs_at_matched_top1, "cost_share": family.cost_share}
    if ablation is not None:
        names = [k for k, _ in ABLATION_COSTS]
        out["ablation"] = {
            "gmacs": dict(zip(names, ablation.costs)),
            **{r.key: {"run": r.run.name, "best_top1": r.best_top1, "top1_at": dict(zip(names, r.top1_at))}
               for r in ablation.rows if r.run is not None},
        }
    return out
