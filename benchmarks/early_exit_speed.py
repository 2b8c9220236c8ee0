"""Real early-exit throughput against static models, on the default Fashion-MNIST setup.

Not a test: run it by hand from the repository root (`python benchmarks/early_exit_speed.py`); it
needs the fetched dataset (`dvt fetch`). For each cascade run of params.yaml (or those named with
--runs) it runs the real pipeline stages collect -> budget -> speed in a scratch folder (never
touching runs/) and times, on speed.batch_size test images with speed.threads threads:

* real early exit (`dvt.inference.early_exit_predict`) at the middle budget p = (eval.num_budgets + 1) // 2
  (p = 30, q = 1.5 for the paper's 59 budgets);
* the last exit alone: a plain one-exit model on the last grid (the paper's Table 2 reference);
* the whole cascade without early exit (exits 1..K on every image);

and prints measured speed-up / GMACs-predicted speed-up against each ("efficiency", 1 = early exit
costs exactly its multiply-adds), plus the time predicted from the measured per-exit stage times,
which separates the early-exit mechanism's own cost from how well GMACs predict each stage's time.

On a shared machine the load changes from minute to minute: --rounds N times every run N times
(collect and budget once) and adds a row of per-column medians per run.

Weights (--weights): `auto` takes runs/<run>/seed<S>/checkpoint.pt (the first seed) when it is a finished checkpoint of the
current settings, else random initial weights; `random` always uses random weights. Time does not
depend on the weights, and the budget's thresholds, fitted on the calibration split, send the
budget's target shares out at each exit whatever the weights, so random weights time the same work.
The printed exit shares say which shares were timed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from dvt import checkpoint
from dvt.checkpoint import trained_checkpoint
from dvt.config import Config, load_config
from dvt.errors import DvtError
from dvt.run_models import model_for_run
from dvt.stages.budget import run as budget
from dvt.stages.collect import run as collect
from dvt.stages.speed import run as speed


def place_weights(source: Config, scratch: Config, run: str, mode: str) -> str:
    """Put a checkpoint for `run` into the scratch runs folder; returns which kind it is."""
    target = scratch.run_dir(run) / "checkpoint.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    if mode == "auto":
        try:
            shutil.copyfile(trained_checkpoint(source, run)[0], target)
            return "trained"
        except DvtError:
            pass  # not trained (or trained with other settings): time random weights instead
    torch.manual_seed(scratch.seed)
    model = model_for_run(scratch, run)
    checkpoint.save(target, {"model": model.state_dict(), "config": checkpoint.run_fingerprint(scratch, run),
                             "epoch": scratch.train.epochs, "log": []})
    return "random"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--runs", nargs="*", help="cascade runs to time (default: every multi-exit run)")
    parser.add_argument("--weights", choices=["auto", "random"], default="auto")
    parser.add_argument("--workdir", help="scratch folder for the runs' outputs (default: a temporary one)")
    parser.add_argument("--rounds", type=int, default=1, help="time every run this many times (default 1)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")

    source = load_config(args.params, args.overrides)
    source = source.with_seed(source.seeds[0])
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dvt-early-exit-"))
    middle = (source.eval.num_budgets + 1) // 2
    scratch = load_config(args.params, [*args.overrides, f"runs_dir={workdir / 'runs'}",
                                        f"speed.budgets=[{middle}]"]).with_seed(source.seed)
    runs = args.runs or [name for name, rc in source.runs.items() if rc.num_exits > 1]
    results: dict[str, tuple[str, list[dict[str, Any]]]] = {}
    for run in runs:
        weights = place_weights(source, scratch, run, args.weights)
        collect(scratch, run=run)
        budget(scratch, run=run)
        results[run] = (weights, [])
    for _ in range(args.rounds):
        for run in runs:  # in turns, so that a change of load hits every run alike
            results[run][1].append(speed(scratch, run=run))

    first = results[runs[0]][1][0]
    print(f"\nearly exit at budget p = {middle} (q = {middle * source.eval.q_step:g}); {first['device_name']}, "
          f"torch {first['torch']}, {first['threads']} thread(s), batch {first['batch_size']}, "
          f"median of {first['repeats']}" + (f", {args.rounds} rounds" if args.rounds > 1 else "")
          + f"; outputs in {workdir}")
    print("| run | weights | grids | exit shares | GMACs | img/s | last exit alone: img/s, measured / ideal = eff. "
          "| whole cascade: img/s, measured / ideal = eff. | vs stage times: eff. |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run, (weights, rounds) in results.items():
        rows = [_row(r, middle) for r in rounds]
        if len(rows) > 1:
            rows.append({k: statistics.median(row[k] for row in rows) for k in rows[0]})
        for i, row in enumerate(rows):
            label = f"{run} (median)" if i == args.rounds else run
            print(_format(label, weights, rounds[0]["grids"], rounds[0]["dynamic"][f"p{middle}"], row))
    return 0


def _row(result: dict[str, Any], middle: int) -> dict[str, float]:
    """The numbers of one speed.json that the table shows."""
    d = result["dynamic"][f"p{middle}"]
    s, c = d["vs_standalone"], d["vs_cascade"]
    return {"img_per_s": d["img_per_s"], "standalone_img_per_s": result["static"]["standalone"]["img_per_s"],
            "s_measured": s["measured"], "s_ideal": s["ideal"], "s_eff": s["efficiency"],
            "cascade_img_per_s": result["static"]["cascade"]["img_per_s"],
            "c_measured": c["measured"], "c_ideal": c["ideal"], "c_eff": c["efficiency"],
            "stage_eff": d["vs_stage_times"]["efficiency"]}


def _format(label: str, weights: str, grids: list[int], dynamic: dict[str, Any], row: dict[str, float]) -> str:
    """One table row; exit shares and GMACs (the same in every round) from the dynamic entry."""
    return (f"| {label} | {weights} | {grids} | {' / '.join(f'{f:.2f}' for f in dynamic['exit_fractions'])} "
            f"| {dynamic['gmacs']:.4f} | {row['img_per_s']:.0f} "
            f"| {row['standalone_img_per_s']:.0f}: x{row['s_measured']:.2f} / x{row['s_ideal']:.2f} = "
            f"{row['s_eff']:.2f} "
            f"| {row['cascade_img_per_s']:.0f}: x{row['c_measured']:.2f} / x{row['c_ideal']:.2f} = "
            f"{row['c_eff']:.2f} "
            f"| {row['stage_eff']:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
