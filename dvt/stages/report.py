"""`dvt report [--part P]`: the paper's tables and figures from the stage outputs of the runs in params.yaml.

Parts, each one output under report.dir (`--part` renders one; without it, all of them):

| part     | writes        | reads (runs/<run>/seed<S>/..., for every seed; flops.json: runs/<run>/)    |
|----------|---------------|----------------------------------------------------------------------------|
| table1   | table1.md     | one-exit runs: eval.json, flops.json                                       |
| table2   | table2.md     | cascades and one-exit runs: eval.json, budget.csv, speed.json (optional)   |
| table3   | table3.md     | cascades and one-exit runs: eval.json, budget.csv                          |
| ablation | ablation.md   | every set of reuse siblings: eval.json, budget.csv                         |
| figures  | figures/      | cascades: eval.json, budget.csv; one-exit runs: eval.json; every run:      |
|          |               | train_log.csv; DVT: logits.parquet and the dataset's test images (gallery), |
|          |               | policies.csv and policies.json (the exit policies' curves)                 |
| findings | findings.md   | what table1-3 and ablation read, each lead cascade's logits.parquet, the test |
|          |               | sizes (cluttered-fashion-mnist): each finding of the paper, held or not   |
| findings_json | findings.json | the same findings as data                                           |
| comparisons | comparisons.json | what table2, table3 and ablation read: their comparisons, as data    |
| metrics  | metrics.json  | the headline: each run's top-1, DVT's cost share and speed-up, findings held, |
|          |               | the best exit policy's gain and the risk check (numbers only, for `dvc exp  |
|          |               | show`; reads what findings and policies read)                              |
| plots    | plots/        | what figures reads but the logits: one CSV per chart of DVC's top-level     |
|          |               | plots (every run in one chart), and the page `dvc plots show` fills        |
| policies | policies.md   | every cascade: policies.json (`dvt policies`): each exit policy against max |
|          |               | softmax at the same costs, and the risk-controlled thresholds with re-splits |
| policies_json | policies.json | the same comparison, as data                                        |
| index    | index.md      | params.yaml; DVT's logits.parquet (gallery ids); any speed.json (optional) |

With several seeds every number is the mean over them (Table 1 and the ablation also give the standard
deviation); which image leaves at which exit is each seed's own (findings) or the first seed's (gallery).
Pages come from report.dir/templates/<page>.j2; the paper's values from dvt/reference/paper.yaml.
Which run plays which part is read off params.yaml (dvt.reporting.compare.assign_roles): "DVT", the
paper's, is the first cascade with both reuses (else the first cascade), and its pages come first; every
other cascade follows in its own section of Tables 2 and 3 and the policies page, each compared with the
one-exit ViTs of its own backbone. Cascades that differ only in their reuse switches are siblings: each
set gets an ablation table, and its lead (the paper's DVT, or the set's first with both reuses) the
findings about cascades (findings.json and metrics.json: "other_cascades", "cascades").

Everything is read, checked and rendered before anything is written: a missing or stale input is one
DvtError line naming the stage to run. Figures and plots are written into temporary folders that
replace figures/ and plots/ whole once every other part has been rendered; pages and JSON files are
replaced file by file.
"""

from __future__ import annotations

import contextlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from dvt.atomic import atomic_dir, write_text
from dvt.checkpoint import git_commit
from dvt.config import Config
from dvt.data.cluttered import object_sides, objects_file
from dvt.data.info import dataset_info
from dvt.errors import DvtError
from dvt.logits import read_logits
from dvt.reporting import (
    compare,
    exit_policies,
    figures,
    findings,
    gallery,
    overlays,
    pages,
    reference,
)
from dvt.reporting.inputs import RunFiles, run_files
from dvt.thresholds import assign_exits

PARTS = {"table1": "table1.md", "table2": "table2.md", "table3": "table3.md", "ablation": "ablation.md",
         "findings": "findings.md", "findings_json": "findings.json", "figures": "figures",
         "comparisons": "comparisons.json", "metrics": "metrics.json", "plots": "plots", "policies": "policies.md",
         "policies_json": "policies.json", "index": "index.md"}
JSON_PARTS = ("findings_json", "comparisons", "metrics", "policies_json")
FOLDER_PARTS = ("figures", "plots")


class Report:
    """What the parts share, each computed (and its files read) on first use."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.out = Path(config.report.dir)
        self.runs = run_files(config)
        self.roles = compare.assign_roles(self.runs)
        self.dvt = self.roles.dvt
        self.main = self.dvt.name if self.dvt else ""  # the key of the paper's DVT in the per-cascade dicts
        self.env = pages.environment(self.out / "templates")  # unreadable templates stop it before any input
        self.ref = reference.load()
        self.setting = reference.Setting(dataset=config.data.dataset, backbone=config.model.backbone,
                                         image_size=dataset_info(config.data).image_size)
        self.paper_curves = self.ref.curves_for(self.setting, self.dvt.grids) if self.dvt else []
        self.paper_table1 = self.ref.table1 if self.ref.table1.setting == self.setting else None

    # Per cascade (by name), each against the runs of its own view (compare.Roles: the paper's DVT first).
    @cached_property
    def costs(self) -> dict[str, list[compare.VsCost]]:
        return {v.dvt.name: [compare.vs_cost(v.dvt, s) for s in v.singles] for v in self.roles.views}

    @cached_property
    def speeds(self) -> dict[str, list[compare.VsSpeed]]:
        found = {v.dvt.name: [compare.vs_speed(v.dvt, s) for s in v.singles] for v in self.roles.views}
        return {name: [s for s in vs if s is not None] for name, vs in found.items()}

    @cached_property
    def family(self) -> dict[str, compare.VsFamily | None]:
        return {v.dvt.name: compare.vs_family(v.dvt, v.family) for v in self.roles.views}

    @cached_property
    def ablation(self) -> dict[str, compare.Ablation]:
        """One per set of reuse siblings: the paper's DVT's always, another set's where it has two or more."""
        found = {v.dvt.name: compare.compare_reuse(v) for v in self.roles.leads}
        return {name: a for i, (name, a) in enumerate(found.items())
                if a is not None and (i == 0 or len(a.rows) - len(a.missing) > 1)}

    @cached_property
    def policies(self) -> dict[str, exit_policies.PolicyComparison]:
        """Every cascade's (the policies part), the paper's DVT's first and read once (main_policies)."""
        found = {v.dvt.name: self.main_policies if v.dvt is self.dvt else exit_policies.compare_policies(v.dvt)
                 for v in self.roles.views}
        return {name: p for name, p in found.items() if p is not None}

    @cached_property
    def main_policies(self) -> exit_policies.PolicyComparison | None:
        """The paper's DVT's alone: the figures and the headline read no other cascade's policies.json
        (Snakemake may render them before the other cascades' policies exist)."""
        return exit_policies.compare_policies(self.dvt)

    @cached_property
    def picks(self) -> gallery.Picks | None:
        if self.dvt is None or self.config.report.gallery_size == 0:
            return None
        return gallery.pick(self.dvt, size=self.config.report.gallery_size)

    @cached_property
    def verdicts(self) -> list[findings.Finding]:
        """Every finding, for the paper's DVT."""
        roles = self.roles
        return [findings.grid_order(roles.singles),
                findings.baseline_gap(roles.singles, roles.baselines[0] if roles.baselines else None),
                *self._cascade_verdicts(roles)]

    @cached_property
    def other_verdicts(self) -> dict[str, list[findings.Finding]]:
        """The findings about a cascade, for the lead cascade of every other set of reuse siblings."""
        return {v.dvt.name: self._cascade_verdicts(v) for v in self.roles.leads[1:]}

    def _cascade_verdicts(self, view: compare.Roles) -> list[findings.Finding]:
        dvt = view.dvt
        name = dvt.name if dvt else ""
        costs, family = self.costs.get(name, []), self.family.get(name)
        per_seed, budget = self._exits_and_sides(dvt)
        return [findings.exits_rise(dvt, view.singles),
                findings.matched_accuracy(costs, dvt, findings.CascadeShape.of_paper(self.ref)),
                findings.matched_cost(costs, findings.paper_first_exit_gap(self.ref)),
                findings.above_the_family(family),
                findings.cheaper_than_the_family(family),
                findings.reuse_matters(view),
                findings.easy_images_are_larger(per_seed, num_exits=dvt.num_exits if dvt else 0, budget=budget),
                findings.faster_at_equal_accuracy(self.speeds.get(name, []))]

    def _exits_and_sides(self, dvt: RunFiles | None) -> tuple[list[findings.ExitSides], int | None]:
        """For each seed of the cascade, where each test image leaves at the budget whose q is nearest 1
        (every exit then takes about the same share), and its object's side in px where the dataset records it."""
        folder = Path(self.config.data.root) / self.config.data.dataset
        sides = object_sides(folder, "test")
        if dvt is None or sides is None:
            return [], None
        per_seed, budget = [], None
        for seed in dvt.seeds:
            frame = seed.budget
            row = frame.iloc[int(np.argmin(np.abs(frame["q"].to_numpy(float) - 1.0)))]
            T = np.array([row[f"threshold_{k}"] for k in range(dvt.num_exits)], dtype=np.float64)
            test = read_logits(seed.logits_path, splits=["test"])["test"]
            if len(sides) <= int(test.sample.max()):
                raise DvtError(f"{folder / objects_file('test')} has {len(sides)} rows but {seed.logits_path} names "
                               f"test image {int(test.sample.max())}: rerun `dvt fetch`, then "
                               f"`{seed.config.command('collect', seed.name)}`")
            per_seed.append(findings.ExitSides(exits=assign_exits(test.confidence, T), sides=sides[test.sample]))
            budget = int(row["budget"])
        return per_seed, budget

    def page(self, part: str) -> str:
        ref, roles, setting, main = self.ref, self.roles, self.setting, self.main
        context = {
            "table1": lambda: pages.table1(ref, setting, roles.singles, roles.baselines),
            "table2": lambda: pages.table2(ref, roles, self.speeds),
            "table3": lambda: pages.table3(ref, roles, self.costs),
            "ablation": lambda: pages.ablation(ref, setting, self.ablation),
            "findings": lambda: {"findings": self.verdicts, "family": self.family.get(main),
                                 "others": self.other_verdicts},
            "policies": lambda: {"comparisons": list(self.policies.values()), "words": exit_policies.WORDS},
            "index": lambda: pages.index(self.config, runs=self.runs, gallery=self.picks, git_commit=git_commit(),
                                         paper_overlay=bool(self.paper_curves or self.paper_table1),
                                         has_policies=self.dvt is not None),
        }[part]()
        return pages.render(self.env, PARTS[part], {**pages.common(self.config, setting, roles, ref), **context})

    def data(self, part: str) -> dict[str, Any]:
        """The content of a JSON part (one of JSON_PARTS). The paper's DVT's numbers sit at the top level
        as they always have; every other cascade's under "other_cascades" (only when there is one)."""
        dataset, main = self.config.data.dataset, self.main

        def others(values: dict[str, Any]) -> dict[str, Any]:
            found = {name: v for name, v in values.items() if name != main}
            return {"other_cascades": found} if found else {}

        def policies() -> dict[str, Any]:  # (read only for its own part: the others do not depend on it)
            every = {name: p.to_dict() for name, p in self.policies.items()}
            return {"dataset": dataset, **every.get(main, {"run": None}), **others(every)}

        return {
            "comparisons": lambda: compare.comparisons(dataset=dataset, seeds=len(self.config.seeds), roles=self.roles,
                                                       costs=self.costs, speeds=self.speeds,
                                                       ablation=self.ablation, family=self.family),
            "metrics": lambda: findings.headline(list(self.runs.values()), self.verdicts, self.main_policies,
                                                 others=self.other_verdicts),
            "policies_json": policies,
            "findings_json": lambda: {"dataset": dataset, "dvt_run": main or None,
                                      "findings": [f.to_dict() for f in self.verdicts],
                                      **others({name: [f.to_dict() for f in v]
                                                for name, v in self.other_verdicts.items()})},
        }[part]()

    def draw(self, folder: Path) -> list[str]:
        """Every figure into `folder`; returns the file names."""
        cascades = [r for r in self.runs.values() if r.is_cascade]
        pictures = gallery.prepare(self.config, self.picks) if self.picks is not None else None
        title = f"{pages.DATASET_NAMES[self.config.data.dataset]}, {self.config.model.backbone}"
        drawn = figures.accuracy_vs_gmacs(folder, cascades=cascades, singles=self.roles.singles,
                                          baselines=self.roles.baselines, paper_curves=self.paper_curves,
                                          paper_table1=self.paper_table1, title=title, family=self.family.get(self.main))
        drawn += figures.training_curves(folder, list(self.runs.values()))
        drawn += figures.exit_fractions(folder, cascades, q_step=self.config.eval.q_step)
        if self.main_policies is not None:
            drawn += figures.policies(folder, self.dvt, self.main_policies)
        if pictures is not None:
            drawn += gallery.draw(folder, pictures)
        return drawn

    def overlay(self, folder: Path) -> list[str]:
        """The tables of DVC's top-level plots and their offline page into `folder`; returns the file names."""
        return overlays.write(folder, list(self.runs.values()))


def run(config: Config, *, part: str | None = None) -> dict[str, Any]:
    """Render `part` (default: every part) into report.dir; returns what was written, by part."""
    if part is not None and part not in PARTS:
        raise DvtError(f"--part {part!r} is not a part of the report; choose from {', '.join(PARTS)}")
    report = Report(config)
    wanted = list(PARTS) if part is None else [part]
    done: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        for p in wanted:
            if p in FOLDER_PARTS:
                # Replaces the folder only when the block ends without error, i.e. after every part rendered.
                folder = stack.enter_context(atomic_dir(report.out / PARTS[p]))
                done[p] = report.draw(folder) if p == "figures" else report.overlay(folder)
            elif p in JSON_PARTS:
                done[p] = report.data(p)
            else:
                done[p] = report.page(p)
        # JSON parts are serialised before the first file is written, so an unwritable value fails
        # the whole report instead of leaving some pages new and some old.
        texts = {p: json.dumps(content, indent=2) + "\n" for p, content in done.items() if p in JSON_PARTS}
        for p, content in done.items():
            if p in texts:
                write_text(report.out / PARTS[p], texts[p])
            elif p not in FOLDER_PARTS:
                write_text(report.out / PARTS[p], content)
    _summary(report, done)
    return done


def _summary(report: Report, done: dict[str, Any]) -> None:
    files = ", ".join(f"{PARTS[p]}/ ({len(v)} files)" if p in FOLDER_PARTS else PARTS[p] for p, v in done.items())
    shown = report.dvt is not None and ("table3" in done or "comparisons" in done)  # else costs were not read
    costs = report.costs[report.dvt.name] if shown else []
    best = max((c for c in costs if c.speedup is not None), key=lambda c: c.speedup, default=None)
    saving = "" if best is None else f"; DVT ({report.dvt.name}) reaches {best.run}'s top-1 at " + (
        f"{best.speedup:.2f}x fewer GMACs" if best.speedup >= 1 else f"{1 / best.speedup:.2f}x its GMACs")
    print(f"dvt report: {files} -> {report.out}{saving}")
