"""Does each of the paper's findings hold here? Computed from the stage outputs, never typed.

One `Finding` per claim of the paper: the numbers compared (ours), the bar they must clear, and
whether they clear it (None when the runs or the data cannot tell, e.g. no no-reuse cascade, or no
object sizes outside the cluttered dataset).
The bars are the ones the default experiment is held to; the paper's own figures for
each claim are in `claim`. `dvt report` writes them to findings.json and findings.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dvt.reporting.compare import Roles, VsCost, VsFamily, VsSpeed
from dvt.reporting.exit_policies import PolicyComparison
from dvt.reporting.inputs import RunFiles
from dvt.reporting.reference import Reference
from dvt.thresholds import gmacs_for_accuracy, mean_accuracy

# Bars (points of top-1 unless named otherwise).
MIN_GRID_GAIN = 3.0  # finest one-exit model over the coarsest
LAST_EXIT_SLACK = 0.5  # DVT's last exit may trail the finest one-exit model by this much
MAX_COST_SHARE = 0.6  # DVT reaches the finest model's top-1 at most at this share of its GMACs
MIN_SHARE_ABOVE_FRONT = 0.5  # of the costs DVT and the depth family both reach
BASELINE_SLACK = 8.0  # the finest ViT may trail the reference CNN by this much
MIN_STANDARD_ERRORS = 3.0  # exit-1 and last-exit images' mean object side differ by this many SEs


@dataclass(frozen=True)
class Finding:
    name: str
    claim: str  # the paper's finding, with where it says so
    numbers: dict[str, Any]  # ours, rounded for reading; None where it does not exist
    bar: str  # what the numbers must show for the finding to hold here
    holds: bool | None  # None: the runs or the data cannot tell

    def __post_init__(self) -> None:
        # Comparisons of numpy scalars give numpy bools, which JSON cannot write.
        if self.holds is not None:
            object.__setattr__(self, "holds", bool(self.holds))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _r(x: float | None, digits: int = 2) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def grid_order(singles: tuple[RunFiles, ...]) -> Finding:
    top1 = {f"top1_{r.grids[0]}x{r.grids[0]}": _r(r.top1[0]) for r in singles}
    holds = None
    if len(singles) >= 2:
        acc = [r.top1[0] for r in singles]
        holds = all(b > a for a, b in zip(acc, acc[1:])) and acc[-1] - acc[0] >= MIN_GRID_GAIN
    return Finding(
        name="finer_grids_are_more_accurate",
        claim="One-exit ViTs get more accurate with more tokens (Table 1: T2T-ViT-12 60.8 / 70.3 / 76.7 % "
              "at 4x4 / 7x7 / 14x14).",
        numbers=top1,
        bar=f"top-1 rises with the grid, and the finest model beats the coarsest by at least {MIN_GRID_GAIN:g} points",
        holds=holds)


def baseline_gap(singles: tuple[RunFiles, ...], baseline: RunFiles | None) -> Finding:
    finest = singles[-1] if singles else None
    numbers = {"finest_vit_top1": _r(finest.top1[0]) if finest else None,
               "baseline": baseline.name if baseline else None,
               "baseline_top1": _r(baseline.top1[0]) if baseline else None}
    holds = None
    if finest is not None and baseline is not None:
        numbers["gap"] = _r(baseline.top1[0] - finest.top1[0])
        holds = baseline.top1[0] - finest.top1[0] <= BASELINE_SLACK
    return Finding(
        name="vits_are_sane",
        claim="Not a claim of the paper: a check that the small ViTs trained here are reasonable, against "
              "a CNN trained by the same loop on the same data.",
        numbers=numbers,
        bar=f"the finest one-exit ViT is within {BASELINE_SLACK:g} points of the reference CNN",
        holds=holds)


def exits_rise(dvt: RunFiles | None, singles: tuple[RunFiles, ...]) -> Finding:
    numbers: dict[str, Any] = {}
    holds = None
    if dvt is not None:
        numbers.update({f"dvt_top1_exit{k + 1}": _r(t) for k, t in enumerate(dvt.top1)})
        rising = all(b > a for a, b in zip(dvt.top1, dvt.top1[1:]))
        holds = rising
        if singles:
            finest = singles[-1]
            numbers["finest_one_exit_top1"] = _r(finest.top1[0])
            holds = rising and dvt.top1[-1] >= finest.top1[0] - LAST_EXIT_SLACK
    return Finding(
        name="dvt_exits_rise",
        claim="Each exit of DVT is more accurate than the one before, and the last is as good as the "
              "finest one-exit model (the released DVT-T2T-ViT-12: 69.1 / 75.7 / 80.0 % at 7x7 / 10x10 / 14x14, "
              "against 76.7 % for T2T-ViT-12 alone).",
        numbers=numbers,
        bar=f"top-1 rises exit by exit, and the last exit is at most {LAST_EXIT_SLACK:g} points below the finest "
            "one-exit model",
        holds=holds)


@dataclass(frozen=True)
class CascadeShape:
    """What DVT's cost share at the finest one-exit model's top-1 depends on: how far DVT's last exit
    leads that model (the margin) against how much DVT climbs from its first exit to its last, and
    how fast its budgeted curve climbs. Ours, or a released checkpoint's with the paper's numbers."""

    first_top1: float  # DVT's first exit alone
    last_top1: float  # DVT's last exit alone
    finest_top1: float  # the one-exit model on the last exit's grid
    finest_gmacs: float
    curve_gmacs: tuple[float, ...]  # DVT's budgeted curve
    curve_top1: tuple[float, ...]

    @property
    def margin_share(self) -> float | None:
        """The margin as a fraction of the climb (None if DVT's exits do not climb)."""
        climb = self.last_top1 - self.first_top1
        return (self.last_top1 - self.finest_top1) / climb if climb > 0 else None

    def cost_share_at(self, margin_share: float) -> float:
        """The cost share this curve would show if the finest model sat margin_share of the climb
        below DVT's last exit (NaN where the curve never gets there)."""
        target = self.last_top1 - margin_share * (self.last_top1 - self.first_top1)
        return gmacs_for_accuracy(self.curve_gmacs, self.curve_top1, target) / self.finest_gmacs

    @classmethod
    def of_paper(cls, ref: Reference) -> CascadeShape | None:
        """The released DVT (T2T-ViT-12) against T2T-ViT-12 on 14x14 tokens (Table 1), ImageNet."""
        curve = next((c for c in ref.curves if c.setting.backbone == "t2t_vit_12"), None)
        exits = next((m for m in ref.per_exit if m.backbone == "t2t_vit_12"), None)
        finest = ref.table1.row(14)
        if curve is None or exits is None or finest is None:
            return None
        return cls(first_top1=exits.top1[0], last_top1=exits.top1[-1], finest_top1=finest.top1,
                   finest_gmacs=finest.gmacs, curve_gmacs=curve.gmacs, curve_top1=curve.top1)


def matched_accuracy(costs: list[VsCost], dvt: RunFiles | None = None, paper: CascadeShape | None = None) -> Finding:
    """With DVT's run and the paper's shape, the numbers also split the cost share into its two causes:
    each curve read at the other's margin (dimensionless, so an ImageNet curve can be read this way)."""
    finest = max(costs, key=lambda c: c.grid) if costs else None
    numbers: dict[str, Any] = {}
    holds = None
    if finest is not None:
        share = None if finest.dvt_gmacs_at_top1 is None else finest.dvt_gmacs_at_top1 / finest.gmacs
        numbers = {"finest": finest.run, "finest_top1": _r(finest.top1), "finest_gmacs": _r(finest.gmacs, 6),
                   "dvt_gmacs_at_that_top1": _r(finest.dvt_gmacs_at_top1, 6), "cost_share": _r(share, 3)}
        holds = share is not None and share <= MAX_COST_SHARE
        if dvt is not None and paper is not None:
            g, a = dvt.curve()
            ours = CascadeShape(first_top1=dvt.top1[0], last_top1=dvt.top1[-1], finest_top1=finest.top1,
                                finest_gmacs=finest.gmacs, curve_gmacs=tuple(g), curve_top1=tuple(a))
            m, pm = ours.margin_share, paper.margin_share
            numbers |= {"margin_share": _r(m, 3), "paper_margin_share": _r(pm, 3),
                        "paper_cost_share": None if pm is None else _r(paper.cost_share_at(pm), 3),
                        "paper_cost_share_at_our_margin": None if m is None else _r(paper.cost_share_at(m), 3),
                        "cost_share_at_paper_margin": None if pm is None else _r(ours.cost_share_at(pm), 3)}
    return Finding(
        name="dvt_is_cheaper_at_equal_accuracy",
        claim="DVT matches the accuracy of the one-exit model of its own backbone on its finest grid with far "
              "fewer GFLOPs (Table 1's models; the paper's 1.6-3.6x fewer of Fig. 6 / Table 3 is against a family "
              "of depths: dvt_is_cheaper_than_the_family).",
        numbers=numbers,
        bar=f"DVT reaches the finest one-exit model's top-1 at no more than {MAX_COST_SHARE:g} of its GFLOPs "
            "(DVT never reaching it fails)",
        holds=holds)


def above_the_family(family: VsFamily | None) -> Finding:
    numbers: dict[str, Any] = {}
    holds = None
    if family is not None:
        numbers = {"members": len(family.members), "on_front": len(family.front),
                   "gmacs_from": _r(family.lo, 6), "gmacs_to": _r(family.hi, 6),
                   "share_above_front": _r(family.share_above, 3), "mean_gap": _r(family.mean_gap)}
        holds = family.share_above is not None and family.share_above >= MIN_SHARE_ABOVE_FRONT \
            and family.mean_gap is not None and family.mean_gap > 0
    return Finding(
        name="dvt_is_above_the_family_front",
        claim="Fig. 6, the paper's own comparison: DVT's budgeted curve lies above the accuracy-cost front of "
              "one-exit models of other depths and widths at full tokens (T2T-ViT-7 to -19, DeiT-T/S/B). Here "
              "the family is the one-exit runs on DVT's last grid (runs.<run>.backbone: configs/fig6.yaml); "
              "without runs of another depth it cannot be told.",
        numbers=numbers,
        bar=f"over the costs both reach, DVT is above the family's front on at least {MIN_SHARE_ABOVE_FRONT:g} of "
            "them and by a positive mean gap",
        holds=holds)


def cheaper_than_the_family(family: VsFamily | None) -> Finding:
    numbers: dict[str, Any] = {}
    holds = None
    if family is not None:
        m = family.matched
        numbers = {"matched": m.run if m else None, "matched_top1": _r(m.top1) if m else None,
                   "matched_gmacs": _r(m.gmacs, 6) if m else None,
                   "dvt_gmacs_at_that_top1": _r(family.dvt_gmacs_at_matched_top1, 6),
                   "cost_share": _r(family.cost_share, 3)}
        holds = family.cost_share is not None and family.cost_share <= MAX_COST_SHARE
    return Finding(
        name="dvt_is_cheaper_than_the_family",
        claim="Fig. 6 / Table 3: DVT reaches the accuracy of the family's models with 1.6-3.6x fewer GFLOPs. "
              "Here: the most accurate family member whose top-1 DVT's curve reaches.",
        numbers=numbers,
        bar=f"DVT reaches that member's top-1 at no more than {MAX_COST_SHARE:g} of its GFLOPs",
        holds=holds)


def paper_first_exit_gap(ref: Reference) -> float | None:
    """The released DVT (T2T-ViT-12)'s first exit minus T2T-ViT-12 trained alone on the same 7x7
    tokens (Table 1): the paper's own standing on the equal-cost bar at that cascade's cheapest point."""
    shape, alone = CascadeShape.of_paper(ref), ref.table1.row(7)
    return None if shape is None or alone is None else shape.first_top1 - alone.top1


def matched_cost(costs: list[VsCost], paper_gap: float | None = None) -> Finding:
    coarsest = min(costs, key=lambda c: c.grid) if costs else None
    numbers: dict[str, Any] = {}
    holds = None
    if coarsest is not None:
        numbers = {"coarsest": coarsest.run, "coarsest_top1": _r(coarsest.top1),
                   "coarsest_gmacs": _r(coarsest.gmacs, 6), "dvt_top1_at_that_cost": _r(coarsest.dvt_top1_at_gmacs)}
        if paper_gap is not None:
            numbers["paper_first_exit_minus_one_exit_model"] = _r(paper_gap)
        holds = coarsest.dvt_top1_at_gmacs is not None and coarsest.dvt_top1_at_gmacs >= coarsest.top1
    return Finding(
        name="dvt_is_better_at_equal_cost",
        claim="At the cost of a cheap one-exit model DVT is more accurate (Fig. 6: the DVT curve lies above "
              "every T2T-ViT). Fig. 6 compares T2T-ViTs of other depths; against T2T-ViT-12 on its first exit's "
              "own 7x7 tokens (Table 1) the released cascade's first exit is behind "
              "(paper_first_exit_minus_one_exit_model).",
        numbers=numbers,
        bar="DVT's top-1 at the coarsest one-exit model's GFLOPs is at least that model's",
        holds=holds)


def reuse_matters(roles: Roles) -> Finding:
    both, none = roles.ablation.get("both"), roles.ablation.get("none")
    numbers: dict[str, Any] = {}
    holds = None
    if both is not None and none is not None:
        gain = both.top1[-1] - none.top1[-1]
        # The larger of the two last exits' seed-to-seed spreads: a gain inside it could be luck.
        stds = [s[-1] for s in (both.top1_std, none.top1_std) if s is not None]
        seed_std = max(stds) if stds else None
        # Not part of the bar, but what a reader must see beside it: reuse also costs GMACs and can cost the
        # first exit accuracy, so the curves can cross. The mean gap over the costs both curves cover.
        (g, a), (g0, a0) = both.curve(), none.curve()
        lo, hi = max(g.min(), g0.min()), min(g.max(), g0.max())
        curve_gain = mean_accuracy(g, a, lo, hi) - mean_accuracy(g0, a0, lo, hi)
        numbers = {"dvt_last_exit": _r(both.top1[-1]), "no_reuse_last_exit": _r(none.top1[-1]), "gain": _r(gain),
                   "seeds": len(both.seeds), "seed_std": _r(seed_std), "mean_gain_at_equal_gmacs": _r(curve_gain)}
        holds = gain > (seed_std or 0.0)
    return Finding(
        name="reuse_makes_later_exits_better",
        claim="Feature and relationship reuse make the later exits more accurate than the same cascade "
              "without reuse (the paper's reuse ablations). Beside the bar: mean_gain_at_equal_gmacs, DVT's "
              "budgeted curve minus the no-reuse cascade's, averaged over the costs both reach (reuse adds "
              "GMACs, so below some budget the cascade without it can be ahead).",
        numbers=numbers,
        bar="DVT's last exit (mean over seeds) beats the no-reuse cascade's by more than the larger of their seed "
            "standard deviations where there are several seeds",
        holds=holds)


@dataclass(frozen=True)
class ExitSides:
    """One seed's DVT at one budget: the exit each test image leaves at and its object's side."""

    exits: np.ndarray  # (n,) 0-based exit
    sides: np.ndarray  # (n,) px


def easy_images_are_larger(per_seed: list[ExitSides], *, num_exits: int, budget: int | None) -> Finding:
    """Each seed's model sorts the test images by itself; the finding must hold for every seed, and the
    numbers are means over seeds (the standard errors: the smallest, i.e. the weakest seed's)."""
    numbers: dict[str, Any] = {"budget": budget}
    holds = None
    first_n, last_n, first_mean, last_mean, z = [], [], [], [], []
    for seed in per_seed:
        first = seed.sides[seed.exits == 0].astype(float)
        last = seed.sides[seed.exits == num_exits - 1].astype(float)
        first_n.append(len(first))
        last_n.append(len(last))
        if len(first) < 2 or len(last) < 2:
            continue
        se = math.sqrt(first.var(ddof=1) / len(first) + last.var(ddof=1) / len(last))
        first_mean.append(first.mean())
        last_mean.append(last.mean())
        z.append((first.mean() - last.mean()) / se if se > 0 else math.inf)
    if per_seed:
        # Image counts: whole numbers with one seed, means over seeds otherwise.
        count = (lambda n: int(n[0])) if len(per_seed) == 1 else (lambda n: _r(np.mean(n), 1))
        numbers.update({"seeds": len(per_seed), "images_at_exit1": count(first_n),
                        f"images_at_exit{num_exits}": count(last_n)})
    if per_seed and len(z) == len(per_seed):
        diff = float(np.mean(first_mean) - np.mean(last_mean))
        numbers.update({"mean_side_exit1_px": _r(np.mean(first_mean)),
                        f"mean_side_exit{num_exits}_px": _r(np.mean(last_mean)),
                        "difference_px": _r(diff), "standard_errors": _r(min(z))})
        holds = min(z) >= MIN_STANDARD_ERRORS
    return Finding(
        name="easy_images_show_large_objects",
        claim="Images that leave at the first, coarse exit show large, clear objects; those that need the "
              "finest exit show small ones in clutter (Fig. 3 / Fig. 10).",
        numbers=numbers,
        bar=f"the objects of images leaving at exit 1 are larger on average than those of images reaching the "
            f"last exit, by at least {MIN_STANDARD_ERRORS:g} standard errors (for every seed)",
        holds=holds)


def faster_at_equal_accuracy(speeds: list[VsSpeed]) -> Finding:
    finest = max(speeds, key=lambda s: s.grid) if speeds else None
    numbers: dict[str, Any] = {}
    holds = None
    if finest is not None:
        numbers = {"finest": finest.run, "finest_img_per_s": _r(finest.img_per_s, 1),
                   "dvt_img_per_s_at_that_top1": _r(finest.dvt_img_per_s_at_top1, 1),
                   "measured_speedup": _r(finest.speedup), "ideal_speedup": _r(finest.ideal_speedup)}
        holds = finest.speedup is not None and finest.speedup > 1.0
    return Finding(
        name="dvt_is_faster_at_equal_accuracy",
        claim="Fewer GFLOPs become real speed: at equal accuracy DVT processes more images per second "
              "(Table 2: 1.42x for DVT-T2T-ViT-14 on a GPU).",
        numbers=numbers,
        bar="measured throughput of DVT at the finest one-exit model's top-1 exceeds that model's",
        holds=holds)


def headline(runs: list[RunFiles], verdicts: list[Finding], policies: PolicyComparison | None = None, *,
             others: dict[str, list[Finding]] | None = None) -> dict[str, Any]:
    """reports/metrics.json, the numbers `dvc exp show` puts in a row per experiment (means over seeds).

    Numbers only, and few: each run's last-exit top-1; how many of the findings hold; and, read off
    the findings (so both files always agree), DVT's share of the finest one-exit model's GMACs at
    that model's top-1 (the paper's cascades: 0.57-0.63), its top-1 at the coarsest model's GMACs and
    the measured speed-up at the finest model's top-1; with a family of depths (Fig. 6), the share of
    GMACs against the family and the mean gap to its front. Missing numbers (no speed.json) are null; with
    no DVT run there is no "dvt" block. With the exit policies compared (`policies`): the largest gain
    in mean top-1 of another policy over max softmax (points; which one, policies.md says) and the
    share of re-splits on which the risk-controlled thresholds held (mean over seeds). `others`: the
    findings of other cascades (report.other_verdicts), the same block each under "cascades", named by run.
    """
    out: dict[str, Any] = {"top1": {r.name: _r(r.top1[-1]) for r in runs},
                           "findings_held": sum(f.holds is True for f in verdicts)}
    block = _cascade_block(verdicts)
    if block:
        out["dvt"] = block
    if others:
        out["cascades"] = {name: {**_cascade_block(found), "findings_held": sum(f.holds is True for f in found)}
                           for name, found in others.items()}
    if policies is not None:
        base = next(r.mean_top1 for r in policies.rows if r.name == "max_softmax")
        gains = [r.mean_top1 - base for r in policies.rows if r.name != "max_softmax"
                 and r.mean_top1 is not None and base is not None]
        shares = [c.held / c.draws for c in policies.risk if c.draws]
        out["policies"] = {"best_mean_top1_gain": _r(max(gains)) if gains else None,
                           "risk_held_share": _r(sum(shares) / len(shares)) if shares else None}
    return out


def _cascade_block(verdicts: list[Finding]) -> dict[str, Any]:
    """A cascade's headline numbers, read off its findings; empty when it has no matched-accuracy numbers."""
    numbers = {f.name: f.numbers for f in verdicts}
    if not numbers.get("dvt_is_cheaper_at_equal_accuracy"):
        return {}
    out = {"cost_share": numbers["dvt_is_cheaper_at_equal_accuracy"]["cost_share"],
           "top1_at_coarsest_cost": numbers.get("dvt_is_better_at_equal_cost", {}).get("dvt_top1_at_that_cost"),
           "measured_speedup": numbers.get("dvt_is_faster_at_equal_accuracy", {}).get("measured_speedup")}
    if numbers.get("dvt_is_cheaper_than_the_family"):
        out |= {"family_cost_share": numbers["dvt_is_cheaper_than_the_family"]["cost_share"],
                "family_mean_gap": numbers["dvt_is_above_the_family_front"]["mean_gap"]}
    return out
