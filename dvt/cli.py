"""The `dvt` command: one subcommand per pipeline stage, each a thin wrapper over a `run()`.

Both engines (DVC and Snakemake) call exactly these subcommands. Bad input (`DvtError`) becomes a
single line on stderr and exit status 2; other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable

from dvt import __version__
from dvt.errors import DvtError

# stage name -> (module with run(), one-line help, takes --run)
STAGES: dict[str, tuple[str, str, bool]] = {
    "check": ("dvt.stages.check", "refuse any setting a later stage would refuse (backbones, grids, augmentation, files)",
              False),
    "fetch": ("dvt.stages.fetch", "fetch or index the dataset named in params (data.*) into data/<dataset>/", False),
    "train": ("dvt.stages.train", "train one run (a single-token model or a DVT cascade) into runs/<run>/seed<S>/", True),
    "collect": ("dvt.stages.collect", "write every exit's logits on the calibration and test splits to Parquet", True),
    "flops": ("dvt.stages.flops", "count GMACs (fvcore convention) and parameters per exit", True),
    "budget": ("dvt.stages.budget", "fit early-exit thresholds for the paper's budgets and evaluate them", True),
    "policies": ("dvt.stages.policies", "compare exit policies (entropy, margin, temperature, product of experts, caching, "
                 "a learned gate, risk-controlled thresholds) with max softmax at the same budgets", True),
    "speed": ("dvt.stages.speed", "measure static and early-exit throughput", True),
    "report": ("dvt.stages.report", "render the tables and figures into reports/", False),
    # Not a pipeline stage: uses a finished run.
    "predict": ("dvt.stages.predict", "classify image files (or folders of them) with early exit: class, exit, "
                "confidence and GMACs per image", True),
}
# Not a stage of one pipeline: compares several finished ones (the training-budget study).
TREND_HELP = ("compare finished pipelines that differ in training budget: one table and figure of how DVT's "
              "findings move with the images each model saw")
# Stages that work on one trained seed of a run: they take --seed (default: every seed in params, in turn).
PER_SEED = ("train", "collect", "budget", "policies", "speed")
# Stages that build a model or write data: they run `dvt check` first (budget and report need no
# torch and stay fast).
CHECKED = ("fetch", "train", "flops", "collect", "speed")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dvt",
        description="Dynamic Vision Transformers (DVT) reproduction: one subcommand per pipeline stage.",
    )
    parser.add_argument("--version", action="version", version=f"dvt {__version__}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (_, help_text, takes_run) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--params", default="params.yaml", help="configuration file (default: params.yaml)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one params value, e.g. --set train.lr=0.001 (repeatable)")
        if takes_run:
            p.add_argument("--run", required=True, help="run name from the runs: section of params")
        if name in PER_SEED:
            p.add_argument("--seed", type=int, default=None,
                           help="one seed from the seeds: list of params (default: each of them in turn)")
        if name == "train":
            p.add_argument("--restart", action="store_true",
                           help="start over if runs/<run>/seed<S>/checkpoint.pt was trained with other settings "
                                "(the pipeline engines pass this: they re-run train only when a setting changed)")
            # Read as text: a bad value is one line (DvtError), not argparse's usage and error.
            p.add_argument("--processes", default=None, metavar="N",
                           help="train in N processes (DDP through torchrun; gloo on the CPU, one GPU each "
                                "with GPUs) on the same global batches, train.batch_size split evenly "
                                "(default: 1, or WORLD_SIZE under a torchrun started by hand)")
        if name == "check":
            p.add_argument("--verify", action="store_true",
                           help="also hash every trained checkpoint against train's record (train.json) and every "
                                "DVC output against dvc.lock: what DVC restored is what was written")
        if name == "report":
            p.add_argument("--part", default=None,
                           help="render only this part: table1, table2, table3, ablation, findings, findings_json, "
                                "comparisons, metrics, figures, plots, policies, policies_json or index (default: all)")
        if name == "predict":
            p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of them")
            p.add_argument("--seed", type=int, default=None, help="which seed's model (default: the first in params)")
            p.add_argument("--budget", type=int, default=None,
                           help="exit at budget p's thresholds (budget.csv; default: the middle budget)")
            p.add_argument("--target-gmacs", type=float, default=None,
                           help="exit at the thresholds whose average cost per image meets this")
            p.add_argument("--json", dest="as_json", action="store_true", help="JSON instead of a table")
        if name in ("budget", "policies"):
            p.add_argument("--target-gmacs", type=float, default=None,
                           help="also report thresholds for this average cost per image")
            p.add_argument("--target-accuracy", type=float, default=None,
                           help="also report the cheapest thresholds reaching this top-1 (percent)")
    trend = sub.add_parser("trend", help=TREND_HELP, description=TREND_HELP)
    trend.add_argument("folders", nargs="+", metavar="FOLDER",
                       help="finished pipelines (each with its params.yaml, runs/ and report), e.g. studies/budget-*")
    trend.add_argument("--out", required=True, help="the folder to write (replaced as a whole)")
    trend.add_argument("--templates", default="reports/templates",
                       help="where trend.md.j2 is (default: reports/templates)")
    return parser


def _stage_entry(name: str) -> Callable[..., object]:
    module = importlib.import_module(STAGES[name][0])
    return module.run


def _one_line(err: DvtError) -> str:
    """The message of a DvtError; one raised in a DataLoader worker comes back as "Caught DvtError in
    DataLoader worker process N.", the worker's traceback, then the message on the last line."""
    lines = str(err).strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Caught "):
        return lines[-1].split(": ", 1)[-1]
    return " ".join(line.strip() for line in lines)


def _processes(value: str | None) -> int:
    """--processes N: N >= 1; under torchrun, where WORLD_SIZE says how many there are, N must agree."""
    world = os.environ.get("WORLD_SIZE")
    if value is None:
        return int(world or 1)
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise DvtError(f"--processes {value} is not allowed: must be a whole number >= 1")
    if world is not None and n != int(world):
        raise DvtError(f"--processes {n} under torchrun with {world} processes (WORLD_SIZE): leave --processes "
                       "out, or give the same number")
    return n


def _train_args(args: argparse.Namespace) -> list[str]:
    """`dvt train`'s own arguments, for each of the processes that --processes starts (without it)."""
    out = ["train", "--params", args.params, "--run", args.run]
    for override in args.overrides:
        out += ["--set", override]
    if args.seed is not None:
        out += ["--seed", str(args.seed)]
    return out + (["--restart"] if args.restart else [])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.stage == "trend":  # reads each folder's own params.yaml
            from dvt.stages import trend

            trend.run(args.folders, out=args.out, templates=args.templates)
            return 0
        from dvt.config import load_config

        config = load_config(args.params, args.overrides)
        kwargs = {k: v for k, v in vars(args).items() if k not in ("stage", "params", "overrides", "seed",
                                                                   "processes")}
        if "run" in kwargs:
            config.run(kwargs["run"])  # unknown run names fail here, before any work
        processes = _processes(args.processes) if args.stage == "train" else 1
        if args.stage in CHECKED:
            from dvt.stages.check import check

            check(config)
        if processes > 1 and "WORLD_SIZE" not in os.environ:
            from dvt import distributed

            distributed.check_split(config.train.batch_size, processes)
            distributed.note_cores(processes, config.train.threads)
            if args.seed is not None:
                config.with_seed(args.seed)  # a seed not in params: refused here, not by every process
            return distributed.launch(processes, _train_args(args))
        entry = _stage_entry(args.stage)
        if args.stage == "predict":  # one model: the given seed's, else the first
            entry(config.with_seed(args.seed if args.seed is not None else config.seeds[0]), **kwargs)
        elif args.stage not in PER_SEED:
            entry(config, **kwargs)
        else:
            # Checked before any work, so a wrong seed never half-runs the list.
            seeds = config.seeds if args.seed is None else (config.with_seed(args.seed).seed,)
            for seed in seeds:
                entry(config.with_seed(seed), **kwargs)
    except DvtError as err:
        return _stop(f"dvt {args.stage}: error: {_one_line(err)}", 2)
    except KeyboardInterrupt:
        return _stop(f"dvt {args.stage}: interrupted", 130)
    except Exception:
        if os.environ.get("WORLD_SIZE"):
            from dvt import distributed

            if distributed.peer_failed():  # its collective broke because another process stopped first
                return 1
        raise
    return 0


def _stop(message: str, status: int) -> int:
    """Print the one line, or under `dvt train --processes N` leave it to the launcher to print once."""
    if os.environ.get("WORLD_SIZE"):
        from dvt import distributed

        if distributed.hand_over(message, status):
            return status
    print(message, file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
