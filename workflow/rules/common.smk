# Configuration and the helpers every rule file uses.
#
# The configuration is ONE parameter file, params.yaml or the single `--configfile FILE`, read by
# dvt's strict loader: the same checks and messages as `dvt` and DVC, reported once before any job
# runs. Every command gets `--params FILE` when FILE is not params.yaml, so jobs read exactly what was
# validated here. Snakemake's `--config key=value` cannot reach nested keys (train.lr) and would
# silently diverge from the file the commands read, so it is refused.

import json
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from dvt.check import check
from dvt.config import from_dict, read_params, to_dict
from dvt.errors import DvtError

min_version("9.0")


def _params_file() -> str:
    files = [str(f) for f in workflow.overwrite_configfiles]
    if len(files) > 1:
        raise WorkflowError(f"pass one --configfile (got {', '.join(files)}): dvt reads a single parameter file")
    return files[0] if files else "params.yaml"


def _load(path: str):
    """The validated dvt Config of `path`; a bad file stops the workflow with dvt's one-line message."""
    try:
        raw = read_params(path)
        if config and config != raw:
            raise WorkflowError("snakemake --config cannot set dvt's nested keys; edit the parameter file or "
                                "pass another one with --configfile FILE")
        loaded = from_dict(raw)
        check(loaded)  # what the stages would refuse later (backbones, grids, ...): refused before any job
    except DvtError as err:
        print(f"snakemake: error in {path}: {err}", file=sys.stderr)
        sys.exit(2)
    # The declared schema agrees with the loader by construction (tests/test_pipeline_engines.py).
    validate(raw, schema=str(Path(workflow.basedir) / "schemas" / "params.schema.yaml"))
    return loaded


PARAMS = _params_file()
CFG = _load(PARAMS)
RUNS = list(CFG.runs)
SEEDS = [str(s) for s in CFG.seeds]
DATA = f"{CFG.data.root}/{CFG.data.dataset}"
REPORT = CFG.report.dir
_TREE = to_dict(CFG)  # the resolved params as plain data, for the rules' `params:`

wildcard_constraints:
    run="|".join(map(re.escape, RUNS)) or "(?!)",
    seed="|".join(SEEDS),


def dvt(stage: str, *args: str) -> str:
    """The shell command of one stage, exactly as dvc.yaml writes it (plus --params for another file)."""
    params = [] if PARAMS == "params.yaml" else ["--params", PARAMS]
    return " ".join(["dvt", stage, *params, *args])


def settings(*keys: str):
    """A rule's `params:` entry: the dotted params.yaml values a stage reads, as one JSON string.

    Snakemake re-runs a job when its params change, so this mirrors the `params:` lists of dvc.yaml;
    `runs.{run}` takes the run from the job's wildcards.
    """
    def value(wildcards) -> str:
        out = {}
        for key in keys:
            key = key.format(run=getattr(wildcards, "run", ""))
            node = _TREE
            for part in key.split("."):
                node = node[part]
            out[key] = node
        return json.dumps(out, sort_keys=True)

    return value


def run_file(name: str) -> str:
    """A file of one seed of a run (wildcards run and seed); flops.json is the run's, shared by its seeds."""
    return "runs/{run}/flops.json" if name == "flops.json" else f"runs/{{run}}/seed{{seed}}/{name}"


def seed_args() -> str:
    return "--run {wildcards.run} --seed {wildcards.seed}"
