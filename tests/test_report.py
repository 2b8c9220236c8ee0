"""`dvt report`: every number in the pages traces to a stage output or to the paper's reference file.

`build_runs` makes a default-like run set in seconds: a synthetic dataset, three one-exit runs and the
four reuse settings of a 3-exit cascade, each trained for two steps (real train_log.csv / train.json),
counted by the real `dvt flops` and evaluated by the real `dvt budget`; DVT and the one-exit runs are
timed by the real `dvt speed` (Table 2 reads no other).
Only the logits are designed instead of collected: a shared per-image difficulty decides which exits
are right and how confident they are, so the curves have the paper's shape and the comparisons have
answers. The official-checkpoint-like set (ImageNet, T2T-ViT-12 at 224 px) is written the same way
without any model: imported-style train outputs and the flops.json of the paper's GMACs.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from dvt import checkpoint
from dvt.cli import main
from dvt.config import Config, load_config
from dvt.reporting import overlays
from dvt.reporting.compare import VsCost
from dvt.reporting.findings import CascadeShape
from dvt.reporting.pages import FILTERS
from dvt.reporting.reference import load as load_reference
from dvt.stages import fetch
from dvt.stages import report as report_module
from dvt.stages.budget import run as budget
from dvt.stages.flops import run as flops
from dvt.stages.policies import run as exit_policies
from dvt.stages.report import run as report
from dvt.stages.speed import run as speed
from dvt.stages.train import run as train
from tests.helpers import (
    REPO,
    REPORT_PARAMS,
    copy_templates,
    write_logits,
    write_params_file,
)

# Trains models or builds a pipeline: not in `make test-fast`.
pytestmark = pytest.mark.slow

RUNS = {
    "tokens_2x2": {"grids": [2]}, "tokens_4x4": {"grids": [4]}, "tokens_8x8": {"grids": [8]},
    "dvt": {"grids": [2, 4, 8], "feature_reuse": True, "relation_reuse": True},
    "dvt_no_reuse": {"grids": [2, 4, 8], "feature_reuse": False, "relation_reuse": False},
    "dvt_feature_reuse": {"grids": [2, 4, 8], "feature_reuse": True, "relation_reuse": False},
    "dvt_relation_reuse": {"grids": [2, 4, 8], "feature_reuse": False, "relation_reuse": True},
}
# Designed top-1 (%) of each exit: later exits right on a superset of the images earlier ones get right.
ACCURACY = {"tokens_2x2": [55], "tokens_4x4": [70], "tokens_8x8": [82], "dvt": [58, 74, 86],
            "dvt_no_reuse": [55, 70, 80], "dvt_feature_reuse": [56, 72, 83], "dvt_relation_reuse": [57, 71, 84]}
PARAMS = {**REPORT_PARAMS, "runs": RUNS}
# Timed by `dvt speed`: every one-exit run, DVT and one other cascade (Table 2 has a section per cascade,
# and names the two left untimed).
TIMED = ("tokens_2x2", "tokens_4x4", "tokens_8x8", "dvt", "dvt_no_reuse")
PAPER = yaml.safe_load((REPO / "dvt" / "reference" / "paper.yaml").read_text())
DASH = "—"


# ---------------------------------------------------------------------------------------------
# Building run outputs


def write_params(root: Path, **changes) -> Path:
    return write_params_file(root, PARAMS, report__dir=str(root / "reports"), **changes)


def params_beside(params: Path, root: Path, **changes) -> Path:
    """root/params.yaml: `params` with changes, reading the same data and runs, reporting into root/reports."""
    base = yaml.safe_load(params.read_text())
    changes = {"data__root": base["data"]["root"], "runs_dir": base["runs_dir"],
               "report__dir": str(root / "reports"), **changes}
    path = write_params_file(root, base, **changes)
    copy_templates(load_config(path))
    return path


def build_runs(root: Path) -> Path:
    """The default-like run set under root (see the module docstring); returns the params file."""
    params = write_params(root)
    config = load_config(params)
    fetch.run(config)
    folder = Path(config.data.root) / "synthetic"
    labels = {s: np.load(folder / f"{s}_labels.npy") for s in ("calibration", "test")}
    for i, name in enumerate(RUNS):
        train(config, run=name)
        flops(config, run=name)
        write_logits(config, name, labels, 10, ACCURACY[name], seed=i)
        budget(config, run=name)
        if name in TIMED:
            speed(config, run=name)
        if config.run(name).num_exits > 1:  # the policies page has every cascade
            exit_policies(config, run=name)
    copy_templates(config)
    return params


OFFICIAL_RUNS = {"tokens_4x4": {"grids": [4]}, "tokens_7x7": {"grids": [7]}, "tokens_14x14": {"grids": [14]},
                 "dvt": {"grids": [7, 10, 14]}}
# Cumulative GMACs of the paper (spec §6) for the official layout.
OFFICIAL_GMACS = {"tokens_4x4": [0.21], "tokens_7x7": [0.472], "tokens_14x14": [1.775], "dvt": [0.472, 1.462, 3.497]}
OFFICIAL_ACCURACY = {"tokens_4x4": [60], "tokens_7x7": [70], "tokens_14x14": [77], "dvt": [69, 76, 80]}


def build_official(root: Path, *, test_size: int = 100) -> Path:
    """ImageNet + T2T-ViT-12 at 224 px with imported weights: the configuration the paper's values describe."""
    source = root / "ilsvrc"
    params = write_params_file(root, PARAMS, data={"dataset": "imagenet", "source": str(source),
                                                   "root": str(root / "data"), "calibration_size": 100},
                               model={"backbone": "t2t_vit_12", "drop_path": 0.1}, runs=OFFICIAL_RUNS,
                               report__dir=str(root / "reports"))
    config = load_config(params)
    rng = np.random.default_rng(0)
    classes = [f"n{c:08d}" for c in range(1000)]
    data = Path(config.data.root) / "imagenet"
    data.mkdir(parents=True)
    labels = {"calibration": rng.integers(0, 1000, 100), "test": rng.integers(0, 1000, test_size)}
    for split, y in labels.items():
        lines = ["path,label"]
        for i, label in enumerate(y):
            rel = f"{'val' if split == 'test' else 'train'}/{classes[label]}/img{i}.png"
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 9), (int(label) % 256, i % 256, 40)).save(source / rel)
            lines.append(f"{rel},{label}")
        (data / f"{split}.csv").write_text("\n".join(lines) + "\n")
    (data / "MANIFEST.json").write_text(json.dumps({
        "dataset": "imagenet", "format": "imagefolder-index", "source": str(source), "classes": classes,
        "counts": {"train": 0, "calibration": 100, "test": test_size}, "image_size": 224, "channels": 3}))
    for i, (name, spec) in enumerate(OFFICIAL_RUNS.items()):
        folder = config.run_dir(name)
        folder.mkdir(parents=True)
        (folder / "checkpoint.pt").write_bytes(b"imported weights stand-in")
        top1 = OFFICIAL_ACCURACY[name]
        row = {"epoch": 0, **{f"top1_exit{k + 1}": t for k, t in enumerate(top1)}, "seconds": 0.0,
               "images_per_s": 0.0}
        (folder / "train_log.csv").write_text(",".join(row) + "\n" + ",".join(map(str, row.values())) + "\n")
        (folder / "train.json").write_text(json.dumps({"run": name, "grids": spec["grids"], "epochs": 0}))
        cumulative = OFFICIAL_GMACS[name]
        stages = np.diff([0.0, *cumulative])
        config.flops_path(name).write_text(json.dumps({
            "run": name, "backbone": "t2t_vit_12", "image_size": 224, "in_chans": 3, "num_classes": 1000,
            "exits": [{"exit": k + 1, "grid": g, "tokens": g * g + 1, "stage_gmacs": float(s),
                       "cumulative_gmacs": c, "params": 7_000_000} for k, (g, s, c) in
                      enumerate(zip(spec["grids"], stages, cumulative))],
            "total": {"gmacs": cumulative[-1], "params": 7_000_000 * len(cumulative)}}))
        write_logits(config, name, labels, 1000, top1, seed=i)
        budget(config, run=name)
        if config.run(name).num_exits > 1:
            exit_policies(config, run=name)
    copy_templates(config)
    return params


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return build_runs(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def rendered(runs) -> tuple[Config, dict]:
    config = load_config(runs)
    return config, report(config)["comparisons"]


# ---------------------------------------------------------------------------------------------
# Re-deriving the numbers, independently of dvt.reporting


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table of a page as rows of {header: cell}."""
    found, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
            continue
        if block:
            header, _, *rows = block
            assert all(len(r) == len(header) for r in rows), block
            found.append([dict(zip(header, r)) for r in rows])
            block = []
    return found


def fmt(kind: str, value: float | None) -> str:
    return FILTERS[kind](value)


def stage_outputs(config: Config, run: str) -> dict:
    folder = config.run_dir(run)
    out = {"eval": json.loads((folder / "eval.json").read_text()), "flops": json.loads(config.flops_path(run).read_text())}
    speed_path = folder / "speed.json"
    out["speed"] = json.loads(speed_path.read_text()) if speed_path.is_file() else None
    out["budget"] = pd.read_csv(folder / "budget.csv")
    return out


def per_exit(metrics: dict, key: str) -> list[float]:
    return [metrics[key][f"exit{k + 1}"] for k in range(len(metrics[key]))]


def curve(outputs: dict) -> list[tuple[float, float]]:
    """budget.csv points plus the two limits from eval.json, as (cost, top-1)."""
    g, a = per_exit(outputs["eval"], "gmacs"), per_exit(outputs["eval"], "top1")
    b = outputs["budget"]
    return list(zip(b["gmacs"], b["accuracy"])) + [(g[0], a[0]), (g[-1], a[-1])]


def _envelope(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    best: dict[float, float] = {}
    for x, y in points:
        best[x] = max(y, best.get(x, -1.0))
    return sorted(best.items())


def value_at(points: list[tuple[float, float]], x: float) -> float | None:
    pts = _envelope(points)
    if x < pts[0][0] or x > pts[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[0][1]


def cost_for(points: list[tuple[float, float]], y: float) -> float | None:
    pts = sorted(points, key=lambda p: p[0])
    if pts[0][1] >= y:
        return pts[0][0]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if y1 >= y:
            return x0 + (y - y0) / (y1 - y0) * (x1 - x0)
    return None


def div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


def sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def page(config: Config, name: str) -> str:
    return (Path(config.report.dir) / name).read_text()


# ---------------------------------------------------------------------------------------------
# The default-like run set


def test_every_page_and_figure_is_written(rendered):
    config, metrics = rendered
    out = Path(config.report.dir)
    for name in ("table1.md", "table2.md", "table3.md", "ablation.md", "index.md", "metrics.json", "comparisons.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "comparisons.json").read_text()) == metrics
    for stem in ("accuracy_vs_gmacs", "training_curves", "exit_fractions", "gallery"):
        assert (out / "figures" / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in (out / "figures" / f"{stem}.svg").read_bytes()[:2000]
    index = page(config, "index.md")
    for link in ("table1.md", "table2.md", "table3.md", "ablation.md", "figures/gallery.png", "metrics.json",
                 "comparisons.json", "policies.md", "figures/policies.png"):
        assert f"]({link})" in index
    assert "GFLOPs (multiply-adds)" in page(config, "table3.md")
    assert "{{" not in index and "{%" not in index
    # Nothing but the pages, metrics and figures appears next to the templates.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["ablation.md", "comparisons.json", "figures", "findings.json", "findings.md", "index.md", "metrics.json",
         "plots", "policies.json", "policies.md", "table1.md", "table2.md", "table3.md", "templates"])


def test_plot_tables_hold_every_run_as_its_files_say(rendered):
    """plots/: one long table per chart of dvc.yaml's top-level plots, read back against each run's own
    budget.csv, eval.json, train_log.csv and DVCLive files."""
    config, _ = rendered
    plots = Path(config.report.dir) / "plots"
    assert sorted(p.name for p in plots.iterdir()) == ["accuracy_vs_gmacs.csv", "calibration_top1.csv",
                                                       "exit_shares.csv", "vega-embed.js", "vega-lite.js", "vega.js"]
    acc = pd.read_csv(plots / "accuracy_vs_gmacs.csv")
    top1 = pd.read_csv(plots / "calibration_top1.csv")
    shares = pd.read_csv(plots / "exit_shares.csv")
    assert set(acc.series) == set(config.runs)
    for name, spec in config.runs.items():
        folder = config.run_dir(name)
        ours = json.loads((folder / "eval.json").read_text())
        line = acc[acc.series == name]
        if spec.num_exits == 1:
            assert len(line) == 1
            assert line[["gmacs", "top1"]].to_numpy()[0] == pytest.approx(
                [ours["gmacs"]["exit1"], ours["top1"]["exit1"]], rel=1e-5)
        else:
            budget = pd.read_csv(folder / "budget.csv").sort_values("gmacs")
            assert line.gmacs.to_numpy() == pytest.approx(budget.gmacs.to_numpy(), rel=1e-5)
            assert line.top1.to_numpy() == pytest.approx(budget.accuracy.to_numpy(), rel=1e-5)
            # every budget sends all of its test images somewhere
            mine = shares[shares.series.str.startswith(f"{name} exit ")]
            assert len(mine) == spec.num_exits * len(budget)
            assert mine.groupby("budget").share.sum().to_numpy() == pytest.approx(100.0, abs=1e-3)
        log = pd.read_csv(folder / "train_log.csv")
        for k in range(spec.num_exits):
            series = name if spec.num_exits == 1 else f"{name} exit {k + 1}"
            curve = top1[top1.series == series]
            assert curve.epoch.tolist() == log.epoch.tolist()
            assert curve.top1.to_numpy() == pytest.approx(log[f"top1_exit{k + 1}"].to_numpy(), rel=1e-5)
            # DVCLive's history of the same exit: one row per epoch, step = epoch
            tsv = pd.read_csv(folder / "live" / "plots" / "metrics" / "calibration" / f"top1_exit{k + 1}.tsv", sep="\t")
            assert tsv.step.tolist() == log.epoch.tolist()
            assert tsv[f"top1_exit{k + 1}"].to_numpy() == pytest.approx(log[f"top1_exit{k + 1}"].to_numpy(), rel=1e-5)
    assert not shares.series.str.startswith(tuple(n + " " for n, s in config.runs.items() if s.num_exits == 1)).any()
    # The Vega libraries DVC's page loads (nothing from the network): each UMD build defines its global.
    for file, name in (("vega.js", "vega"), ("vega-lite.js", "vegaLite"), ("vega-embed.js", "vegaEmbed")):
        assert f"global.{name} =" in (plots / file).read_text(), name
    # DVC's page is in git, so a fresh clone has it; it is the one the code writes, and loads exactly
    # those files from where DVC puts its output (dvc_plots/ beside reports/).
    page_html = (REPO / ".dvc" / "plots" / "page.html").read_text()
    assert page_html == overlays.page()
    assert page_html.count("{plot_divs}") == 1 and "{scripts}" not in page_html and "cdn." not in page_html
    assert re.findall(r'<script src="([^"]+)">', page_html) == [f"../reports/plots/{f}" for f in
                                                                 ("vega.js", "vega-lite.js", "vega-embed.js")]
    assert "html_template = plots/page.html" in (REPO / ".dvc" / "config").read_text()


def test_table1_numbers_are_the_one_exit_runs_outputs(rendered):
    config, _ = rendered
    (ours, paper), = [tables(page(config, "table1.md"))]
    assert [r["run"] for r in ours] == ["tokens_2x2", "tokens_4x4", "tokens_8x8"]
    for row in ours:
        out = stage_outputs(config, row["run"])
        assert row["top-1 (%)"] == fmt("pct", out["eval"]["top1"]["exit1"])
        assert row["GFLOPs (multiply-adds)"] == fmt("gmacs", out["eval"]["gmacs"]["exit1"])
        assert row["GFLOPs (multiply-adds)"] == fmt("gmacs", out["flops"]["total"]["gmacs"])
        assert row["parameters (M)"] == fmt("millions", out["flops"]["total"]["params"] / 1e6)
    # Not the paper's configuration: the paper's Table 1 stands apart, as the reference file has it.
    assert "paper top-1 (%)" not in ours[0]
    assert [(r["tokens"], r["top-1 (%)"], r["GFLOPs (multiply-adds)"]) for r in paper] == [
        (f"{r['grid']}x{r['grid']}", fmt("pct", r["top1"]), fmt("paper_gmacs", r["gmacs"])) for r in PAPER["table1"]["rows"]]
    assert PAPER["table1"]["source"] in page(config, "table1.md")


def test_table3_numbers_are_derived_from_budget_and_eval(rendered):
    """A section per cascade, the paper's DVT first, then the others in params.yaml's order, each read
    against its own budget.csv (and in comparisons.json under other_cascades)."""
    config, metrics = rendered
    text = page(config, "table3.md")
    *sections, paper, fig6 = tables(text)
    cascades = ["dvt"] + [name for name, spec in config.runs.items() if spec.num_exits > 1 and name != "dvt"]
    assert len(sections) == len(cascades) == 4
    assert "The paper's DVT here is `dvt` (2x2 → 4x4 → 8x8), the first cascade in params.yaml with feature" in text
    for name in cascades[1:]:
        assert f"## `{name}` (2x2 → 4x4 → 8x8, `vit_micro`, " in text
    for name, ours in zip(cascades, sections):
        dvt = curve(stage_outputs(config, name))
        stored_all = metrics if name == "dvt" else metrics["other_cascades"][name]
        answered = 0
        assert [row["run"] for row in ours] == ["tokens_2x2", "tokens_4x4", "tokens_8x8"]
        for row in ours:
            base = stage_outputs(config, row["run"])["eval"]
            g, a = base["gmacs"]["exit1"], base["top1"]["exit1"]
            need, at = cost_for(dvt, a), value_at(dvt, g)
            assert row["top-1 (%)"] == fmt("pct", a) and row["GFLOPs (multiply-adds)"] == fmt("gmacs", g)
            assert row["DVT GFLOPs (multiply-adds) at this top-1"] == fmt("gmacs", need)
            assert row["speed-up"] == fmt("times", div(g, need))
            assert row["DVT top-1 at this cost (%)"] == fmt("pct", at)
            assert row["gain (points)"] == fmt("signed", sub(at, a))
            stored = stored_all["matched_gmacs"][row["run"]]
            assert stored["dvt_gmacs_at_top1"] == pytest.approx(need) if need is not None else stored["speedup"] is None
            answered += need is not None
        if name == "dvt":
            assert answered >= 2  # the designed curves beat the one-exit runs: real speed-ups are shown
    for row, ref in zip(paper, PAPER["table3"]["rows"]):
        assert row["model"] == ref["model"]
        assert row["CIFAR-10 top-1 (%)"] == fmt("pct", ref["cifar10"]["top1"])
        for name, key in (("CIFAR-10", "cifar10"), ("CIFAR-100", "cifar100")):
            ref_row = ref[key]
            assert row[f"{name} DVT GFLOPs (multiply-adds)"] == fmt("paper_gmacs", ref_row["dvt_gmacs"])
            assert row[f"{name} speed-up"] == fmt("times", ref_row["gmacs"] / ref_row["dvt_gmacs"])
    assert [r["speed-up"] for r in fig6] == [fmt("times", r["speedup"]) for r in PAPER["fig6_speedups"]["rows"]]


def check_table2_section(config: Config, text: str, name: str, vs: list, points: list, dynamic: list,
                         stored: dict) -> None:
    """One cascade's section of Table 2 against its speed.json, budget.csv and eval.json."""
    dvt = stage_outputs(config, name)
    s = dvt["speed"]
    assert f"{s['device_name']} (`{s['device']}`, {s['threads']} CPU thread" in text and s["torch"] in text
    exits, top1 = s["static"]["exits"], per_exit(dvt["eval"], "top1")
    budgets = dvt["budget"].set_index("budget")
    timed = ([(exits["exit1"]["img_per_s"], top1[0])]
             + [(d["img_per_s"], budgets.loc[d["budget"], "accuracy"]) for d in
                sorted(s["dynamic"].values(), key=lambda d: d["budget"])]
             + [(exits["exit3"]["img_per_s"], top1[-1])])
    assert [(r["img/s"], r["top-1 (%)"]) for r in points] == [(fmt("ips", i), fmt("pct", a)) for i, a in timed]
    seconds = [(1 / i, a) for i, a in timed]
    for row in vs:
        base = stage_outputs(config, row["run"])
        ips, a = base["speed"]["static"]["cascade"]["img_per_s"], base["eval"]["top1"]["exit1"]
        at, need = value_at(seconds, 1 / ips), cost_for(seconds, a)
        dvt_ips = None if need is None else 1 / need
        ideal = div(base["eval"]["gmacs"]["exit1"], cost_for(curve(dvt), a))
        assert row["img/s"] == fmt("ips", ips)
        assert row["DVT top-1 at this img/s (%)"] == fmt("pct", at)
        assert row["gain (points)"] == fmt("signed", sub(at, a))
        assert row["DVT img/s at this top-1"] == fmt("ips", dvt_ips)
        assert row["speed-up"] == fmt("times", div(dvt_ips, ips))
        assert row["ideal speed-up"] == fmt("times", ideal)
        assert row["measured / ideal"] == fmt("ratio", div(div(dvt_ips, ips), ideal))
        assert stored["matched_throughput"][row["run"]]["img_per_s"] == ips
    for row, d in zip(dynamic, sorted(s["dynamic"].values(), key=lambda d: d["budget"])):
        assert row["budget p"] == str(d["budget"])
        assert row["measured"] == fmt("times", d["vs_standalone"]["measured"])
        assert row["measured / ideal"] == fmt("ratio", d["vs_standalone"]["efficiency"])


def test_table2_numbers_are_derived_from_speed_json(rendered):
    config, metrics = rendered
    text = page(config, "table2.md")
    *sections, paper = tables(text)
    assert len(sections) == 2 * 3  # the timed cascades' comparison, operating points and budgets
    assert "## `dvt_no_reuse` (2x2 → 4x4 → 8x8, `vit_micro`, no reuse)" in text
    for name, (vs, points, dynamic) in zip(("dvt", "dvt_no_reuse"), zip(*[iter(sections)] * 3)):
        check_table2_section(config, text, name, vs, points, dynamic,
                             metrics if name == "dvt" else metrics["other_cascades"][name])
    for row, ref in zip(paper, PAPER["table2"]["rows"]):
        assert (row["model"], row["img/s"], row["DVT top-1 (%)"]) == (ref["model"], fmt("ips", ref["img_per_s"]),
                                                                      fmt("pct", ref["dvt_top1"]))
        throughput = ref["matched"] == "throughput"
        assert row["gain (points)"] == fmt("signed", ref["dvt_top1"] - ref["top1"] if throughput else None)
        assert row["speed-up"] == fmt("times", None if throughput else ref["dvt_img_per_s"] / ref["img_per_s"])
    assert ("Not measured yet: `dvt_feature_reuse` (run `dvt speed --run dvt_feature_reuse`), `dvt_relation_reuse` "
            "(run `dvt speed --run dvt_relation_reuse`).") in text


def test_ablation_compares_the_four_reuse_settings_at_named_costs(rendered):
    config, metrics = rendered
    text = page(config, "ablation.md")
    ours, released = tables(text)
    assert [r["run"] for r in ours] == ["dvt", "dvt_feature_reuse", "dvt_relation_reuse", "dvt_no_reuse"]
    curves = {r["run"]: curve(stage_outputs(config, r["run"])) for r in ours}
    lo = max(min(x for x, _ in c) for c in curves.values())
    hi = min(max(x for x, _ in c) for c in curves.values())
    costs = [float(f"{lo + f * (hi - lo):.3g}") for f in (0.25, 0.5, 0.75)]
    assert list(metrics["ablation"]["gmacs"].values()) == costs
    for row in ours:
        out = stage_outputs(config, row["run"])
        assert row["top-1 per exit (%)"] == " / ".join(fmt("pct", t) for t in per_exit(out["eval"], "top1"))
        assert row["GFLOPs (multiply-adds) per exit"] == " / ".join(fmt("gmacs", g) for g in per_exit(out["eval"], "gmacs"))
        assert row["best DVT top-1 (%)"] == fmt("pct", max(a for _, a in curves[row["run"]]))
        for c in costs:
            assert row[f"DVT top-1 at {fmt('gmacs', c)} (%)"] == fmt("pct", value_at(curves[row["run"]], c))
    assert "All four reuse settings are present" in text
    assert [r["checkpoint"] for r in released] == [m["name"] for m in PAPER["per_exit_top1"]["models"]]


def test_index_records_configuration_commit_and_environment(rendered):
    config, _ = rendered
    index = page(config, "index.md")
    assert "vit_micro" in index and "q_step: 0.1" in index
    assert checkpoint.git_commit() in index
    import torch

    assert f"| torch | {torch.__version__.split('+')[0]}" in index
    assert "speed measured on" in index and "cpu" in index


def test_gallery_shows_real_test_images_picked_by_the_logits(rendered):
    config, _ = rendered
    import pandas as pd

    logits = pd.read_parquet(config.run_dir("dvt") / "logits.parquet")
    test = logits[logits["split"] == "test"].pivot(index="sample", columns="exit", values="confidence")
    first = sorted(test.index, key=lambda s: (-float(test.loc[s, 0]), s))[:4]
    early = test[[0, 1]].max(axis=1)
    last = sorted(test.index, key=lambda s: (float(early[s]), s))[:4]
    shown = read_runs_gallery(config)
    picks = shown.picks
    assert [p.sample for p in picks.easy] == first and [p.sample for p in picks.hard] == last
    folder = Path(config.data.root) / "synthetic"
    images, labels = np.load(folder / "test_images.npy"), np.load(folder / "test_labels.npy")
    for p in picks.easy + picks.hard:
        np.testing.assert_array_equal(shown.images[p.sample], images[p.sample, :, :, 0])
        assert p.label == labels[p.sample]
    index = page(config, "index.md")
    assert f"easy {', '.join(map(str, first))}; hard {', '.join(map(str, last))}" in index


def read_runs_gallery(config: Config):
    from dvt.reporting import gallery
    from dvt.reporting.inputs import RunFiles

    return gallery.prepare(config, gallery.pick(RunFiles(config, "dvt"), size=config.report.gallery_size))


# ---------------------------------------------------------------------------------------------
# Other run sets and refusals


# A second set of reuse siblings: a wider backbone on the same grids, with its own one-exit model.
SECOND_SET = {"dvt_mini": {"grids": [2, 4, 8], "backbone": "vit_mini"},
              "dvt_mini_no_reuse": {"grids": [2, 4, 8], "backbone": "vit_mini", "feature_reuse": False,
                                    "relation_reuse": False},
              "tokens_mini_8x8": {"grids": [8], "backbone": "vit_mini"}}
SECOND_ACCURACY = {"dvt_mini": [60, 76, 88], "dvt_mini_no_reuse": [57, 72, 81], "tokens_mini_8x8": [84]}


@pytest.fixture(scope="module")
def two_sets(runs, tmp_path_factory) -> Config:
    """The default-like runs plus SECOND_SET, in a copy of their runs folder, reported."""
    root = tmp_path_factory.mktemp("two_sets")
    shutil.copytree(load_config(runs).runs_dir, root / "runs")
    config = load_config(params_beside(runs, root, runs_dir=str(root / "runs"), runs={**RUNS, **SECOND_SET},
                                       report__gallery_size=0))
    folder = Path(config.data.root) / "synthetic"
    labels = {s: np.load(folder / f"{s}_labels.npy") for s in ("calibration", "test")}
    for i, name in enumerate(SECOND_SET):
        train(config, run=name)
        flops(config, run=name)
        write_logits(config, name, labels, 10, SECOND_ACCURACY[name], seed=10 + i)
        budget(config, run=name)
        speed(config, run=name)
        if config.run(name).num_exits > 1:
            exit_policies(config, run=name)
    report(config)
    return config


def test_every_cascade_has_its_rows_in_every_table_about_cascades(two_sets):
    """Two sets of reuse siblings (vit_micro, vit_mini): each cascade gets its section in Tables 2 and 3
    against the one-exit models of its own backbone, each set its ablation, each set's lead its findings
    and headline numbers, every cascade its exit policies; the pages say which cascade is the paper's."""
    config = two_sets
    cascades = [name for name, spec in config.runs.items() if spec.num_exits > 1]
    others = [name for name in cascades if name != "dvt"]
    comparisons = json.loads(page(config, "comparisons.json"))
    assert comparisons["dvt_run"] == "dvt" and list(comparisons["other_cascades"]) == others
    # Table 3: a section per cascade; the vit_mini ones read against the vit_mini one-exit model only.
    text = page(config, "table3.md")
    *sections, _, _ = tables(text)
    assert len(sections) == len(cascades) == 6
    for name, rows in zip(["dvt", *others], sections):
        mini = config.run(name).backbone == "vit_mini"
        assert [r["run"] for r in rows] == (["tokens_mini_8x8"] if mini else ["tokens_2x2", "tokens_4x4", "tokens_8x8"])
        stored = comparisons if name == "dvt" else comparisons["other_cascades"][name]
        assert set(stored["matched_gmacs"]) == {r["run"] for r in rows}
    assert "## `dvt_mini` (2x2 → 4x4 → 8x8, `vit_mini`, feature and relation reuse)" in text
    # Table 2: the timed vit_mini cascades have their own sections.
    text2 = page(config, "table2.md")
    for name in ("dvt_mini", "dvt_mini_no_reuse"):
        assert f"## `{name}` (2x2 → 4x4 → 8x8, `vit_mini`" in text2
        assert set(comparisons["other_cascades"][name]["matched_throughput"]) == {"tokens_mini_8x8"}
    # The ablation: one table per set; vit_mini's siblings never mix into vit_micro's.
    ablation = page(config, "ablation.md")
    ours, second, _ = tables(ablation)
    assert [r["run"] for r in ours] == ["dvt", "dvt_feature_reuse", "dvt_relation_reuse", "dvt_no_reuse"]
    assert [r["run"] for r in second] == ["dvt_mini", "dvt_mini_no_reuse"]
    assert "## The cascades of `vit_mini` on 2x2 → 4x4 → 8x8" in ablation
    assert "copy `runs.dvt_mini` under a new name and set `feature_reuse: true, relation_reuse: false`" in ablation
    assert {k: v["run"] for k, v in comparisons["other_cascades"]["dvt_mini"]["ablation"].items() if k != "gmacs"} \
        == {"both": "dvt_mini", "none": "dvt_mini_no_reuse"}
    # Findings: the lead of the second set (dvt_mini), with its own reuse gain; the vit_micro siblings are not leads.
    found = json.loads(page(config, "findings.json"))
    assert list(found["other_cascades"]) == ["dvt_mini"]
    mini = {f["name"]: f for f in found["other_cascades"]["dvt_mini"]}
    assert mini["reuse_makes_later_exits_better"]["numbers"]["gain"] == pytest.approx(88 - 81)
    assert mini["dvt_exits_rise"]["numbers"]["finest_one_exit_top1"] == pytest.approx(84)
    assert "### `dvt_mini`" in page(config, "findings.md")
    metrics = json.loads(page(config, "metrics.json"))
    assert metrics["cascades"]["dvt_mini"]["findings_held"] == sum(f["holds"] is True for f in mini.values())
    assert metrics["cascades"]["dvt_mini"]["cost_share"] == mini["dvt_is_cheaper_at_equal_accuracy"]["numbers"]["cost_share"]
    assert metrics["findings_held"] == sum(f["holds"] is True for f in found["findings"])
    # Exit policies: every cascade, each from its own policies.json.
    policies = json.loads(page(config, "policies.json"))
    assert policies["run"] == "dvt" and list(policies["other_cascades"]) == others
    for name in others:
        own = json.loads((config.run_dir(name) / "policies.json").read_text())
        assert list(policies["other_cascades"][name]["rows"][i]["name"] for i in range(len(own["policies"]))) \
            == list(own["policies"])
    policies_page = page(config, "policies.md")
    assert all(f"## `{name}`" in policies_page for name in others)
    for part in ("table2.md", "table3.md", "ablation.md", "findings.md", "policies.md"):
        assert "The paper's DVT here is `dvt` (2x2 → 4x4 → 8x8), the first cascade in params.yaml with feature " \
               "and relation reuse." in page(config, part), part


@pytest.mark.parametrize("kept, parts", [
    # Snakemake renders each part from its own inputs, in whatever order the jobs finish: the headline and
    # the figures read the paper's DVT's policies.json alone, the comparisons and findings none.
    (("dvt",), ("metrics", "figures")),
    ((), ("comparisons", "findings_json", "findings", "table2", "table3", "ablation")),
])
def test_a_part_needs_no_policies_json_but_its_own(two_sets, tmp_path, kept, parts):
    runs = tmp_path / "runs"
    shutil.copytree(two_sets.runs_dir, runs)
    removed = [p for p in runs.glob("*/seed*/policies.json") if p.parts[-3] not in kept]
    assert len(removed) == 6 - len(kept)
    for path in removed:
        path.unlink()
    params = params_beside(Path(two_sets.report.dir).parent / "params.yaml", tmp_path, runs_dir=str(runs),
                           report__gallery_size=0)
    for part in parts:
        assert main(["report", "--params", str(params), "--part", part]) == 0, part


def test_without_the_ablation_runs_the_section_says_which_are_missing(runs, tmp_path, capsys):
    subset = {k: v for k, v in RUNS.items() if k in ("tokens_2x2", "tokens_8x8", "dvt")}
    params = params_beside(runs, tmp_path, runs=subset, report__gallery_size=0)
    config = load_config(params)
    metrics = report(config)["comparisons"]
    text = page(config, "ablation.md")
    assert "**Missing settings.**" in text
    for words, feature, relation in (("feature reuse only", "true", "false"), ("relation reuse only", "false", "true"),
                                     ("no reuse", "false", "false")):
        assert f"* {words}. To add one" in text and f"feature_reuse: {feature}, relation_reuse: {relation}" in text
    assert [r["run"] for r in tables(text)[0]] == ["dvt"]
    assert set(metrics["ablation"]) == {"gmacs", "both"}
    assert set(metrics["matched_gmacs"]) == {"tokens_2x2", "tokens_8x8"}
    assert "No gallery: report.gallery_size is 0." in page(config, "index.md")
    assert not (Path(config.report.dir) / "figures" / "gallery.png").exists()
    # Rendering again changes no byte (no dates, no random ids), so DVC sees unchanged outputs.
    out = Path(config.report.dir)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["report", "--params", str(params)]) == 0
    assert ("dvt report: table1.md, table2.md, table3.md, ablation.md, findings.md, findings.json, figures/ (8 files), "
            "comparisons.json, metrics.json, plots/ (6 files), policies.md, policies.json, index.md"
            in capsys.readouterr().out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_official_like_configuration_puts_the_paper_beside_ours(tmp_path):
    params = build_official(tmp_path)
    config = load_config(params)
    report(config)
    (ours,) = tables(page(config, "table1.md"))
    by_grid = {r["grid"]: r for r in PAPER["table1"]["rows"]}
    for row in ours:
        grid = int(row["tokens"].split("x")[0])
        assert row["paper top-1 (%)"] == fmt("pct", by_grid[grid]["top1"])
        assert row["paper GFLOPs (multiply-adds)"] == fmt("paper_gmacs", by_grid[grid]["gmacs"])
    assert "The paper's Table 1 (reference)" not in page(config, "table1.md")
    # The released checkpoint's exits sit under our DVT row, and the reference block is not repeated.
    ablation = page(config, "ablation.md")
    paper_row = tables(ablation)[0][-1]
    assert paper_row["setting"].startswith("paper: DVT (T2T-ViT-12)")
    assert paper_row["top-1 per exit (%)"] == "69.06 / 75.66 / 79.99"
    assert "Released checkpoints, each exit alone (reference)" not in ablation
    # The paper's curves are drawn into the accuracy/cost figure (SVG text is kept as text).
    svg = (Path(config.report.dir) / "figures" / "accuracy_vs_gmacs.svg").read_text()
    assert "paper: DVT (T2T-ViT-12)" in svg and "paper Table 1: T2T-ViT-12" in svg
    assert "paper: DVT (DeiT-S)" not in svg
    # No speed.json anywhere: Table 2 says which stage to run, and shows the paper's table.
    table2 = page(config, "table2.md")
    assert "`dvt` (run `dvt speed --run dvt`)" in table2 and "The paper's Table 2 (reference)" in table2
    assert "## One-exit models against DVT" not in table2


@pytest.mark.parametrize("remove, stage", [
    ("tokens_4x4/seed42/eval.json", "run `dvt budget --run tokens_4x4 --seed 42` first"),
    ("tokens_8x8/flops.json", "run `dvt flops --run tokens_8x8` first"),
    ("dvt/seed42/train_log.csv", "run `dvt train --run dvt --seed 42` first"),
    ("dvt/seed42/logits.parquet", "run `dvt collect --run dvt --seed 42` first"),
])
def test_a_missing_input_names_the_stage_and_nothing_is_written(runs, rendered, tmp_path, capsys, remove, stage):
    config, _ = rendered
    runs_dir = tmp_path / "runs"
    shutil.copytree(config.runs_dir, runs_dir)
    (runs_dir / remove).unlink()
    out = tmp_path / "reports"
    shutil.copytree(Path(config.report.dir), out)  # a previous, complete report
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    params = params_beside(runs, tmp_path, runs_dir=str(runs_dir), report__dir=str(out))
    assert main(["report", "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and stage in err[0], err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_a_part_reads_only_what_it_shows(runs, tmp_path, capsys):
    # Table 1 needs the one-exit runs' eval.json and flops.json and nothing else (Snakemake builds it
    # before any cascade exists).
    base = Path(load_config(runs).runs_dir)
    for name in ("tokens_2x2", "tokens_4x4", "tokens_8x8"):
        (tmp_path / "runs" / name / "seed42").mkdir(parents=True)
        for file in ("seed42/eval.json", "flops.json"):
            shutil.copy(base / name / file, tmp_path / "runs" / name / file)
    params = params_beside(runs, tmp_path, runs_dir=str(tmp_path / "runs"))
    assert main(["report", "--params", str(params), "--part", "table1"]) == 0
    out = tmp_path / "reports"
    assert sorted(p.name for p in out.iterdir()) == ["table1.md", "templates"]
    assert "| tokens_8x8 | 8x8 |" in (out / "table1.md").read_text()
    assert main(["report", "--params", str(params), "--part", "table3"]) == 2
    assert "runs/dvt/seed42/eval.json not found: run `dvt train --run dvt --seed 42` first" in capsys.readouterr().err
    assert main(["report", "--params", str(params), "--part", "table4"]) == 2
    assert "--part 'table4' is not a part of the report; choose from table1, table2" in capsys.readouterr().err


def test_a_run_without_any_output_is_refused(runs, tmp_path, capsys):
    params = params_beside(runs, tmp_path, runs={**RUNS, "untrained": {"grids": [8]}})
    assert main(["report", "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip()
    assert "untrained/seed42/eval.json not found: run `dvt train --run untrained --seed 42` first (then collect, budget)" in err
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["templates"]


def test_findings_are_computed_from_the_stage_outputs(rendered):
    config, metrics = rendered
    found = {f["name"]: f for f in json.loads(page(config, "findings.json"))["findings"]}
    singles = [stage_outputs(config, r)["eval"] for r in ("tokens_2x2", "tokens_4x4", "tokens_8x8")]
    top1 = [e["top1"]["exit1"] for e in singles]
    grids = found["finer_grids_are_more_accurate"]
    assert grids["numbers"] == {f"top1_{g}x{g}": round(t, 2) for g, t in zip((2, 4, 8), top1)}
    assert grids["holds"] == (top1[0] < top1[1] < top1[2] and top1[2] - top1[0] >= 3)
    dvt = stage_outputs(config, "dvt")
    exits = per_exit(dvt["eval"], "top1")
    assert found["dvt_exits_rise"]["holds"] == (exits[0] < exits[1] < exits[2] and exits[2] >= top1[2] - 0.5)
    finest_g = singles[2]["gmacs"]["exit1"]
    need = cost_for(curve(dvt), top1[2])
    cheaper = found["dvt_is_cheaper_at_equal_accuracy"]
    assert cheaper["numbers"]["cost_share"] == (None if need is None else round(need / finest_g, 3))
    assert cheaper["holds"] == (need is not None and need / finest_g <= 0.6)
    # Its two causes: the margin as a share of DVT's climb, and each curve read at the other's margin,
    # the paper's from the released DVT (T2T-ViT-12) and T2T-ViT-12 on 14x14 tokens in paper.yaml.
    paper = yaml.safe_load((REPO / "dvt" / "reference" / "paper.yaml").read_text())
    p_exits = next(m["top1"] for m in paper["per_exit_top1"]["models"] if m["backbone"] == "t2t_vit_12")
    p_curve = [(g, a) for _, g, a in next(c for c in paper["curves"] if c["backbone"] == "t2t_vit_12")["points"]]
    p_finest = next(r for r in paper["table1"]["rows"] if r["grid"] == 14)
    ours_m = (exits[-1] - top1[2]) / (exits[-1] - exits[0]) if exits[-1] > exits[0] else None
    paper_m = (p_exits[-1] - p_finest["top1"]) / (p_exits[-1] - p_exits[0])

    def share_at(points, first, last, finest_gmacs, m):
        return div(cost_for(points, last - m * (last - first)), finest_gmacs)

    n = cheaper["numbers"]
    assert n["margin_share"] == (None if ours_m is None else round(ours_m, 3))
    assert n["paper_margin_share"] == round(paper_m, 3)
    assert n["paper_cost_share"] == round(share_at(p_curve, p_exits[0], p_exits[-1], p_finest["gmacs"], paper_m), 3)
    assert 1 / 1.8 < n["paper_cost_share"] < 1 / 1.6  # Fig. 6 marks DVT 1.7x cheaper than T2T-ViT-12
    mine = share_at(curve(dvt), exits[0], exits[-1], finest_g, paper_m)
    assert n["cost_share_at_paper_margin"] == (None if mine is None else round(mine, 3))
    theirs = None if ours_m is None else share_at(p_curve, p_exits[0], p_exits[-1], p_finest["gmacs"], ours_m)
    assert n["paper_cost_share_at_our_margin"] == (None if theirs is None else round(theirs, 3))
    at = value_at(curve(dvt), singles[0]["gmacs"]["exit1"])
    none = per_exit(stage_outputs(config, "dvt_no_reuse")["eval"], "top1")
    reuse = found["reuse_makes_later_exits_better"]
    assert reuse["numbers"]["gain"] == round(exits[-1] - none[-1], 2) and reuse["holds"] == (exits[-1] > none[-1])
    # Beside the bar, the curves at equal cost: the mean gap over the costs both reach, integrated here
    # on the union of both curves' own points (exact for two piecewise-linear curves).
    ours, theirs = _envelope(curve(dvt)), _envelope(curve(stage_outputs(config, "dvt_no_reuse")))
    lo, hi = max(ours[0][0], theirs[0][0]), min(ours[-1][0], theirs[-1][0])
    xs = sorted({x for x, _ in ours + theirs if lo <= x <= hi} | {lo, hi})
    gap = [value_at(ours, x) - value_at(theirs, x) for x in xs]
    exact = sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], gap, gap[1:])) / (hi - lo)
    assert reuse["numbers"]["mean_gain_at_equal_gmacs"] == pytest.approx(exact, abs=0.011)
    faster = found["dvt_is_faster_at_equal_accuracy"]
    speedup = metrics["matched_throughput"]["tokens_8x8"]["speedup"]
    assert faster["holds"] == (speedup is not None and speedup > 1)
    # Nothing here can tell these: no reference CNN among the runs, no object sizes in synthetic data.
    assert found["vits_are_sane"]["holds"] is None and found["easy_images_show_large_objects"]["holds"] is None
    assert found["dvt_is_better_at_equal_cost"]["holds"] == (at is not None and at >= top1[0])
    # The paper's own standing on that bar: its first exit against T2T-ViT-12 on 7x7 tokens alone.
    p_alone = next(r["top1"] for r in paper["table1"]["rows"] if r["grid"] == 7)
    assert found["dvt_is_better_at_equal_cost"]["numbers"]["paper_first_exit_minus_one_exit_model"] == \
        round(p_exits[0] - p_alone, 2) == -1.24
    text = page(config, "findings.md")
    explained = n["paper_cost_share_at_our_margin"] is not None and n["cost_share_at_paper_margin"] is not None
    assert ("## Where the cost share comes from" in text) == explained
    if explained:
        assert (f"the paper's curve would need {n['paper_cost_share_at_our_margin']} at our margin,\n"
                f"ours {n['cost_share_at_paper_margin']} at the paper's") in text
    for f in found.values():
        verdict = {True: "yes", False: "no", None: "cannot tell"}[f["holds"]]
        assert f"| `{f['name']}` | {verdict} |" in text


# Fig. 6's family: one-exit models of other widths and depths on DVT's last grid (8x8), beside the
# default-like set's own tokens_8x8; vit_tiny costs most and is less accurate than vit_mini: off the front.
FAMILY = {"mini_8x8": ({"grids": [8], "backbone": "vit_mini"}, [84]),
          "tiny_8x8": ({"grids": [8], "backbone": "vit_tiny"}, [83])}


def test_the_family_front_of_fig6_is_computed_from_the_family_runs(runs, rendered, tmp_path):
    config, default = rendered
    found = {f["name"]: f for f in json.loads(page(config, "findings.json"))["findings"]}
    # The default-like set has no other depth: both family findings cannot tell, and say why.
    for name in ("dvt_is_above_the_family_front", "dvt_is_cheaper_than_the_family"):
        assert found[name]["holds"] is None and found[name]["numbers"] == {}
    assert "family" not in default and "family_cost_share" not in json.loads(page(config, "metrics.json"))["dvt"]

    base = yaml.safe_load(runs.read_text())
    shutil.copytree(base["runs_dir"], tmp_path / "runs")
    params = params_beside(runs, tmp_path, runs_dir=str(tmp_path / "runs"), report__gallery_size=0,
                           runs={**RUNS, **{name: spec for name, (spec, _) in FAMILY.items()}})
    config = load_config(params)
    labels = {s: np.load(Path(config.data.root) / "synthetic" / f"{s}_labels.npy") for s in ("calibration", "test")}
    for i, (name, (_, accuracy)) in enumerate(FAMILY.items()):
        train(config, run=name)
        flops(config, run=name)
        write_logits(config, name, labels, 10, accuracy, seed=10 + i)
        budget(config, run=name)
    comparisons = report(config)["comparisons"]

    # Independently: the members (gmacs, top-1) from their own stage outputs, the front by hand.
    points = {r: (stage_outputs(config, r)["eval"]["gmacs"]["exit1"], stage_outputs(config, r)["eval"]["top1"]["exit1"])
              for r in ("tokens_8x8", *FAMILY)}
    members = sorted(points.items(), key=lambda kv: kv[1])
    front = [m for k, m in enumerate(members) if all(m[1][1] > other[1][1] for other in members[:k])]
    assert [r for r, _ in front] == ["tokens_8x8", "mini_8x8"]  # vit_tiny costs more for less
    family = comparisons["family"]
    assert {r: (m["gmacs"], m["top1"], m["on_front"]) for r, m in family["members"].items()} == \
        {r: (*points[r], r in dict(front)) for r in points}
    dvt = curve(stage_outputs(config, "dvt"))
    line = [p for _, p in front]
    lo, hi = max(min(x for x, _ in dvt), line[0][0]), min(max(x for x, _ in dvt), line[-1][0])
    assert family["gmacs_range"] == [pytest.approx(lo), pytest.approx(hi)]
    xs = [lo + (hi - lo) * i / 4000 for i in range(4001)]
    above = sum(value_at(dvt, x) > value_at(line, x) for x in xs) / len(xs)
    assert family["share_above_front"] == pytest.approx(above, abs=0.002)
    gap = [value_at(dvt, x) - value_at(line, x) for x in xs]
    assert family["mean_gap"] == pytest.approx(sum(gap) / len(gap), abs=0.01)
    # The most accurate member DVT reaches (its best: exit 3, 86 %) is vit_mini at 84 %.
    need = cost_for(dvt, points["mini_8x8"][1])
    assert family["matched"] == "mini_8x8" and family["cost_share"] == pytest.approx(need / points["mini_8x8"][0])

    found = {f["name"]: f for f in json.loads(page(config, "findings.json"))["findings"]}
    above_front, cheaper = found["dvt_is_above_the_family_front"], found["dvt_is_cheaper_than_the_family"]
    assert above_front["numbers"]["share_above_front"] == round(family["share_above_front"], 3)
    assert above_front["holds"] == (family["share_above_front"] >= 0.5 and family["mean_gap"] > 0)
    assert cheaper["numbers"]["cost_share"] == round(family["cost_share"], 3)
    assert cheaper["holds"] == (family["cost_share"] <= 0.6)
    # The grid-family findings still compare Table 1's models of DVT's own backbone.
    assert found["dvt_is_cheaper_at_equal_accuracy"]["numbers"]["finest"] == "tokens_8x8"
    assert set(comparisons["matched_gmacs"]) == {"tokens_2x2", "tokens_4x4", "tokens_8x8"}
    headline = json.loads(page(config, "metrics.json"))["dvt"]
    assert headline["family_cost_share"] == cheaper["numbers"]["cost_share"]
    svg = (Path(config.report.dir) / "figures" / "accuracy_vs_gmacs.svg").read_text()
    assert ">one-exit family (Fig. 6) and its front</text>" in svg and ">mini_8x8</text>" in svg
    text = page(config, "findings.md")
    assert "## Fig. 6's comparison: DVT against a family of depths" in text
    rows = {r["run"]: r for r in tables(text)[1]}
    assert {r: rows[r]["on the front"] for r in points} == {r: "yes" if r in dict(front) else "no" for r in points}
    assert f"It reaches mini_8x8's top-1 ({fmt('pct', points['mini_8x8'][1])} %)" in text


def test_cascade_shape_reads_a_curve_at_a_margin():
    # A straight budget curve from exit 1 (1 GMAC, 60 %) to exit 3 (3 GMACs, 70 %); the finest one-exit
    # model (2 GMACs) at 68 % sits 20 % of the climb below DVT's last exit.
    shape = CascadeShape(first_top1=60.0, last_top1=70.0, finest_top1=68.0, finest_gmacs=2.0,
                         curve_gmacs=(1.0, 2.0, 3.0), curve_top1=(60.0, 65.0, 70.0))
    assert shape.margin_share == pytest.approx(0.2)
    assert shape.cost_share_at(0.2) == pytest.approx(2.6 / 2)  # 68 % at 1 + 0.8 * 2 GMACs
    assert shape.cost_share_at(0.5) == pytest.approx(2.0 / 2)
    assert math.isnan(shape.cost_share_at(-0.1))  # above the last exit: never reached
    flat = CascadeShape(first_top1=70.0, last_top1=70.0, finest_top1=68.0, finest_gmacs=2.0,
                        curve_gmacs=(1.0, 3.0), curve_top1=(70.0, 70.0))
    assert flat.margin_share is None  # no climb, no share of it
    paper = CascadeShape.of_paper(load_reference())
    assert (paper.first_top1, paper.last_top1, paper.finest_top1, paper.finest_gmacs) == (69.06, 79.99, 76.7, 1.78)


@pytest.mark.parametrize("share, words", [(0.8, "1.25x fewer GMACs"), (1.25, "1.25x its GMACs")])
def test_the_summary_line_says_more_or_fewer_gmacs_as_the_cost_share_has_it(capsys, share, words):
    """A DVT that needs more GMACs than the model (cost share above 1) must not read as a saving."""
    cost = VsCost(run="tokens_7x7", grid=7, gmacs=1.0, top1=70.0, dvt_top1_at_gmacs=None, dvt_gmacs_at_top1=share,
                  speedup=1 / share)
    fake = SimpleNamespace(costs={"dvt": [cost]}, dvt=SimpleNamespace(name="dvt"), out=Path("reports"))
    report_module._summary(fake, {"table3": "text"})
    said = capsys.readouterr().out
    assert said == f"dvt report: table3.md -> reports; DVT (dvt) reaches tokens_7x7's top-1 at {words}\n"


def test_headline_metrics_are_few_numbers_recomputed_from_the_stage_outputs(rendered):
    """reports/metrics.json and each run's metrics.json: what `dvc exp show` shows, numbers only."""
    config, comparisons = rendered
    head = json.loads(page(config, "metrics.json"))
    found = {f["name"]: f for f in json.loads(page(config, "findings.json"))["findings"]}

    def leaves(tree, prefix=""):
        for k, v in tree.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, v)]

    flat = dict(leaves(head))
    assert all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat.values()), flat
    assert len(flat) <= 16
    for run in config.runs:
        assert head["top1"][run] == round(per_exit(stage_outputs(config, run)["eval"], "top1")[-1], 2)
    assert head["findings_held"] == sum(f["holds"] is True for f in found.values())
    finest = stage_outputs(config, "tokens_8x8")["eval"]
    need = cost_for(curve(stage_outputs(config, "dvt")), finest["top1"]["exit1"])
    assert head["dvt"]["cost_share"] == round(need / finest["gmacs"]["exit1"], 3)
    assert head["dvt"]["cost_share"] == found["dvt_is_cheaper_at_equal_accuracy"]["numbers"]["cost_share"]
    assert head["dvt"]["measured_speedup"] == round(comparisons["matched_throughput"]["tokens_8x8"]["speedup"], 2)
    coarsest = stage_outputs(config, "tokens_2x2")["eval"]["gmacs"]["exit1"]
    assert head["dvt"]["top1_at_coarsest_cost"] == round(value_at(curve(stage_outputs(config, "dvt")), coarsest), 2)
    # the exit policies: the best gain in mean top-1 over max softmax, and the risk check's share held
    own = json.loads((config.run_dir("dvt") / "policies.json").read_text())
    means = {name: p["mean_top1"] for name, p in own["policies"].items()}
    best = max(v - means["max_softmax"] for name, v in means.items() if name != "max_softmax")
    assert head["policies"]["best_mean_top1_gain"] == round(best, 2)
    resplits = own["risk_controlled"]["resplits"]
    assert head["policies"]["risk_held_share"] == round(resplits["held"] / resplits["draws"], 2)

    # Each run's own headline, written by `dvt budget` next to eval.json, under the run's name.
    for run in ("dvt", "tokens_8x8"):
        file = json.loads((config.run_dir(run) / "metrics.json").read_text())
        assert list(file) == [run]
        own, ev = file[run], stage_outputs(config, run)["eval"]
        assert own["top1"] == {k: round(v, 2) for k, v in ev["top1"].items()}
        assert own["gmacs"] == pytest.approx(per_exit(ev, "gmacs")[-1], rel=1e-3)
    budget = pd.read_csv(config.run_dir("dvt") / "budget.csv").set_index("budget")
    own = json.loads((config.run_dir("dvt") / "metrics.json").read_text())["dvt"]
    assert set(own["budget"]) == {"p10", "p20"}  # this config has 20 budgets: p30 does not exist
    assert own["budget"]["p10"]["top1"] == round(budget.at[10, "accuracy"], 2)
    assert "budget" not in json.loads((config.run_dir("tokens_8x8") / "metrics.json").read_text())["tokens_8x8"]


def test_object_scale_finding_reads_where_images_leave(rendered, tmp_path):
    """With object sizes beside the test images, the finding compares the images leaving at exit 1
    with those reaching the last exit, at the budget whose q is nearest 1 (budget.csv's thresholds)."""
    from dvt.logits import read_logits
    from dvt.stages.report import Report

    config, _ = rendered
    objects = Path(config.data.root) / config.data.dataset / "test_objects.npy"
    test = read_logits(config.run_dir("dvt") / "logits.parquet", splits=["test"])["test"]
    # Designed sizes: the more confident exit 1 is, the larger the object (plus noise).
    rng = np.random.default_rng(0)
    sides = np.zeros((int(test.sample.max()) + 1, 3), np.int16)
    sides[test.sample, 0] = (8 + 20 * test.confidence[:, 0] + rng.integers(0, 3, len(test.sample))).astype(np.int16)
    np.save(objects, sides)
    try:
        finding = {f.name: f for f in Report(config).verdicts}["easy_images_show_large_objects"]
        # ... and the same finding as `dvt report` writes it (numpy values serialised as plain JSON).
        report(config, part="findings_json")
        written = {f["name"]: f for f in json.loads(page(config, "findings.json"))["findings"]}
        assert written["easy_images_show_large_objects"] == finding.to_dict()
        assert isinstance(written["easy_images_show_large_objects"]["holds"], bool)
    finally:
        objects.unlink()
        report(config, part="findings_json")
    budget = stage_outputs(config, "dvt")["budget"]
    row = budget.iloc[int(np.argmin(np.abs(budget["q"] - 1.0)))]
    leaves = np.full(len(test.sample), 2)
    for k in (1, 0):  # the first exit whose confidence clears its threshold
        leaves[test.confidence[:, k] >= row[f"threshold_{k}"]] = k
    first, last = sides[test.sample, 0][leaves == 0], sides[test.sample, 0][leaves == 2]
    assert finding.numbers["budget"] == int(row["budget"])
    assert finding.numbers["images_at_exit1"] == len(first) and finding.numbers["images_at_exit3"] == len(last)
    assert finding.numbers["difference_px"] == round(first.mean() - last.mean(), 2)
    se = np.sqrt(first.var(ddof=1) / len(first) + last.var(ddof=1) / len(last))
    assert finding.numbers["standard_errors"] == round((first.mean() - last.mean()) / se, 2)
    assert finding.holds == (first.mean() - last.mean() >= 3 * se)


# Points added to every designed top-1 of a seed: the seeds of one run differ, as real seeds do.
SEED_SHIFT = {1: 0.0, 2: 3.0, 3: -2.0}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Config:
    """Three seeds of four runs, each seed with its own checkpoint, logits and budget."""
    root = tmp_path_factory.mktemp("seeds")
    runs = {k: RUNS[k] for k in ("tokens_2x2", "tokens_8x8", "dvt", "dvt_no_reuse")}
    config = load_config(write_params(root, runs=runs, seeds=list(SEED_SHIFT), report__gallery_size=2))
    fetch.run(config)
    folder = Path(config.data.root) / "synthetic"
    labels = {s: np.load(folder / f"{s}_labels.npy") for s in ("calibration", "test")}
    for i, name in enumerate(runs):
        flops(config, run=name)
        for seed, shift in SEED_SHIFT.items():
            one = config.with_seed(seed)
            train(one, run=name)
            write_logits(one, name, labels, 10, [a + shift for a in ACCURACY[name]], seed=i)
            budget(one, run=name)
            if one.run(name).num_exits > 1:
                exit_policies(one, run=name)
    copy_templates(config)
    report(config)
    return config


def test_several_seeds_are_reported_as_mean_and_standard_deviation(seeded):
    import statistics

    config = seeded
    def seed_top1(run: str) -> list[list[float]]:  # [seed][exit], from each seed's own eval.json
        return [per_exit(stage_outputs(config.with_seed(s), run)["eval"], "top1") for s in config.seeds]

    # Every seed was trained into its own folder, with its own seed in the checkpoint.
    for seed in config.seeds:
        assert checkpoint.load(config.with_seed(seed).run_dir("dvt") / "checkpoint.pt")["config"]["seed"] == seed
    rows = {r["run"]: r for r in tables(page(config, "table1.md"))[0]}
    for run in ("tokens_2x2", "tokens_8x8"):
        top1 = [t[0] for t in seed_top1(run)]
        assert rows[run]["top-1 (%)"] == f"{statistics.mean(top1):.2f} ± {statistics.stdev(top1):.2f}"
    assert "the mean over 3 seeds (1, 2, 3)" in page(config, "table1.md")
    ablation = {r["run"]: r for r in tables(page(config, "ablation.md"))[0]}
    dvt = seed_top1("dvt")
    assert ablation["dvt"]["top-1 per exit (%)"] == " / ".join(
        f"{statistics.mean(e):.2f} ± {statistics.stdev(e):.2f}" for e in zip(*dvt))
    # Reuse must beat the larger of the two last exits' seed standard deviations.
    none = seed_top1("dvt_no_reuse")
    last, none_last = [t[-1] for t in dvt], [t[-1] for t in none]
    found = {f["name"]: f for f in json.loads(page(config, "findings.json"))["findings"]}
    reuse = found["reuse_makes_later_exits_better"]
    std = max(statistics.stdev(last), statistics.stdev(none_last))
    gain = statistics.mean(last) - statistics.mean(none_last)
    assert reuse["numbers"]["seeds"] == 3 and reuse["numbers"]["seed_std"] == round(std, 2)
    assert reuse["numbers"]["gain"] == round(gain, 2) and reuse["holds"] == (gain > std)
    # DVT's curve in Table 3 is the mean of its seeds' curves, budget by budget.
    frames = [stage_outputs(config.with_seed(s), "dvt")["budget"] for s in config.seeds]
    mean_best = max(max(np.mean([f["accuracy"] for f in frames], axis=0)), statistics.mean(last),
                    statistics.mean(t[0] for t in dvt))
    assert f"its best test top-1 is {fmt('pct', mean_best)}%" in " ".join(page(config, "table3.md").split())


def test_the_policies_page_compares_every_policy_with_max_softmax(rendered):
    """Issue #19: the verdicts come from each run's policies.json, none written by hand."""
    config, _ = rendered
    data = json.loads(page(config, "policies.json"))
    per_run = json.loads((config.run_dir("dvt") / "policies.json").read_text())
    assert data["run"] == "dvt" and data["seeds"] == 1
    rows = {r["name"]: r for r in data["rows"]}
    assert list(rows) == list(per_run["policies"])
    for name, found in per_run["policies"].items():
        assert rows[name]["mean_top1"] == pytest.approx(found["mean_top1"])
        for point in rows[name]["at"]:
            assert point["gain"] == pytest.approx(found["at_budgets"][point["budget"]]["gain"])
            assert point["beats"] == (point["gain"] > 0)
            assert point["beyond_spread"] is None  # one seed: no spread to compare with
    assert data["better_than_max_softmax"] == [n for n, r in rows.items()
                                               if n != "max_softmax" and all(a["gain"] > 0 for a in r["at"])]
    risk = per_run["risk_controlled"]["resplits"]
    assert data["risk_holds"] == (risk["held"] >= (1 - per_run["risk_controlled"]["delta"]) * risk["draws"])
    text = page(config, "policies.md")
    assert all(f"| `{name}` |" in text for name in rows)
    assert f"| {risk['held']} / {risk['draws']} (needs 90) |" in text
    assert "{{" not in text and "{%" not in text


def test_with_seeds_a_policy_gain_is_judged_against_their_spread(seeded):
    import statistics

    config = seeded
    files = [json.loads((config.with_seed(s).run_dir("dvt") / "policies.json").read_text()) for s in config.seeds]
    data = json.loads(page(config, "policies.json"))
    assert data["seeds"] == 3
    for row in data["rows"]:
        for point in row["at"]:
            top1 = [f["policies"][row["name"]]["at_budgets"][point["budget"]]["top1"] for f in files]
            base = [f["policies"]["max_softmax"]["at_budgets"][point["budget"]]["top1"] for f in files]
            gain = statistics.mean(t - b for t, b in zip(top1, base))
            spread = max(statistics.stdev(top1), statistics.stdev(base))
            assert point["gain"] == pytest.approx(gain) and point["spread"] == pytest.approx(spread)
            assert point["beyond_spread"] == (abs(gain) > spread)


def test_a_stage_runs_every_seed_or_the_one_asked_for(seeded, capsys):
    config = seeded
    params = Path(config.report.dir).parent / "params.yaml"
    paths = {s: config.with_seed(s).run_dir("tokens_2x2") / "eval.json" for s in config.seeds}
    for path in paths.values():
        path.unlink()
    assert main(["budget", "--params", str(params), "--run", "tokens_2x2", "--seed", "2"]) == 0
    assert [p.is_file() for p in paths.values()] == [False, True, False]
    assert main(["budget", "--params", str(params), "--run", "tokens_2x2"]) == 0
    assert all(p.is_file() for p in paths.values())
    capsys.readouterr()
    before = {p: p.read_bytes() for p in paths.values()}
    assert main(["budget", "--params", str(params), "--run", "tokens_2x2", "--seed", "9"]) == 2
    assert capsys.readouterr().err.strip() == "dvt budget: error: seed 9 is not in seeds [1, 2, 3]"
    assert {p: p.read_bytes() for p in paths.values()} == before


def test_report_help_names_every_part():
    """`dvt report --help` lists the parts without importing the report code; it once missed two."""
    from dvt.cli import _parser

    report = _parser()._subparsers._group_actions[0].choices["report"]
    help_text = next(a.help for a in report._actions if a.dest == "part")
    listed = {word.strip(" ,") for word in help_text.split(":", 1)[1].split("(")[0].replace(" or ", ", ").split(",")}
    assert listed == set(report_module.PARTS)
