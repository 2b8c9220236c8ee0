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

import yaml

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from dvt.stages.check import check
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
        # What the stages would refuse later (backbones, grids, ...): refused before any job. A cluster
        # job's own Snakemake (--mode remote) skips it: the submitting one checked the same file.
        if not workflow.remote_exec:
            check(loaded, pipeline=True)
    except DvtError as err:
        print(f"snakemake: error in {path}: {err}", file=sys.stderr)
        sys.exit(2)
    # The declared schema agrees with the loader by construction (tests/test_pipeline_engines.py).
    validate(raw, schema=str(Path(workflow.basedir) / "schemas" / "params.schema.yaml"))
    return loaded


# The conda environment of every job under --use-conda, relative to the files in rules/ (the pins of .venv/).
ENV = "../envs/dvt.yaml"

PARAMS = _params_file()
CFG = _load(PARAMS)
RUNS = list(CFG.runs)
SEEDS = [str(s) for s in CFG.seeds]
DATA = f"{CFG.data.root}/{CFG.data.dataset}"
REPORT = CFG.report.dir
_TREE = to_dict(CFG)  # the resolved params as plain data, for the rules' `params:`


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


def logged(command: str) -> str:
    """A job's shell command with its output in its log file (`show-failed-logs` prints it on failure)."""
    return f"{command} > {{log}} 2>&1"


def job_files(rule: str, name: str = "{run}/seed{seed}") -> dict[str, str]:
    """A job's log and benchmark paths under logs/<rule>/ (name: the job's wildcards)."""
    return {"log": f"logs/{rule}/{name}.log", "benchmark": f"logs/{rule}/{name}.benchmark.tsv"}


# What each cluster job asks SLURM for (workflow/profiles/slurm/resources.yaml), as the rules' own
# resources: --set-resources on the command line then overrides one value and keeps the others. Locally
# they schedule nothing (no --resources limits them).
_CLUSTER = yaml.safe_load((Path(workflow.basedir) / "profiles" / "slurm" / "resources.yaml").read_text())


def cluster_resources(name: str) -> dict:
    """The SLURM resources of the rule `name`, and for train the processes, one per GPU asked for."""
    from dvt.slurm import gpu_count

    asked = {k: v for k, v in {**_CLUSTER.get("all", {}), **_CLUSTER.get(name, {})}.items() if v is not None}
    if name == "train":
        # a GPU count given on the command line (--set-resources train:gpu=N) wins; one set there as a
        # function of the job cannot be read here, and dvt.slurm refuses the mismatch before submitting
        for key, resource in workflow.resource_settings.overwrite_resources.get(name, {}).items():
            if not resource.is_evaluable():
                asked[key] = resource.value
        asked["processes"] = max(1, gpu_count(asked))
    return asked


# The report: which run plays which part (baselines, the DVT run, the ablation) is dvt's own rule, read
# off the params, so that `snakemake reports/table2.md` trains and measures no more than Table 2 needs.
from dvt.reporting.compare import assign_roles
from dvt.reporting.inputs import run_files

_roles = assign_roles(run_files(CFG))
_parts = _roles.run_names  # every cascade's view, each run once
TABLE1 = [r.name for r in _roles.singles]  # the paper's DVT's grid family
SINGLES = sorted(set(TABLE1 + _parts["singles"]))
BASELINES = _parts["baselines"]
CASCADES = _parts["cascades"]  # the paper's DVT first, then every other cascade
DVT_RUN = CASCADES[:1]  # the paper's DVT: the figures' gallery and exit policies, the index's gallery
LEADS = _parts["leads"]  # the cascades the findings are about (their logits: where images exit)
ABLATION = _parts["ablation"]
FAMILY = _parts["family"]


def files_of(runs: list[str], *names: str) -> list[str]:
    """The named files of every seed of `runs` (flops.json: the run's own)."""
    return [f"runs/{run}/{name}" if name == "flops.json" else f"runs/{run}/seed{seed}/{name}"
            for run in runs for name in names for seed in SEEDS]


# The findings read what Tables 1-3 and the ablation read, DVT's logits (where images exit) and the
# family of depths (Fig. 6).
_FINDINGS_INPUTS = (files_of(CASCADES + SINGLES, "eval.json", "budget.csv", "speed.json")
                    + files_of(BASELINES + FAMILY, "eval.json")
                    + files_of(ABLATION, "eval.json", "budget.csv") + files_of(LEADS, "logits.parquet"))

# part -> (output under report.dir, the run files it reads, its section in `snakemake --report`)
REPORT_PARTS = {
    "table1": ("table1.md", files_of(TABLE1 + BASELINES, "eval.json", "flops.json"), "Tables"),
    "table2": ("table2.md", files_of(CASCADES + SINGLES, "eval.json", "budget.csv", "speed.json"), "Tables"),
    "table3": ("table3.md", files_of(CASCADES + SINGLES, "eval.json", "budget.csv"), "Tables"),
    "ablation": ("ablation.md", files_of(ABLATION, "eval.json", "budget.csv"), "Tables"),
    "figures": ("figures", files_of(RUNS, "eval.json", "budget.csv", "train_log.csv")
                + files_of(DVT_RUN, "logits.parquet", "policies.csv", "policies.json"), "Figures"),
    "findings": ("findings.md", _FINDINGS_INPUTS, "Findings"),
    "findings_json": ("findings.json", _FINDINGS_INPUTS, "Findings"),
    "comparisons": ("comparisons.json", files_of(CASCADES + SINGLES, "eval.json", "budget.csv", "speed.json")
                    + files_of(ABLATION, "eval.json", "budget.csv") + files_of(FAMILY, "eval.json"), "Data"),
    "policies": ("policies.md", files_of(CASCADES, "policies.json"), "Tables"),
    "policies_json": ("policies.json", files_of(CASCADES, "policies.json"), "Data"),
    # One CSV per chart of DVC's top-level plots (every run in it) and the page they are drawn in.
    "plots": ("plots", files_of(RUNS, "eval.json", "budget.csv", "train_log.csv"), "Data"),
    # The headline counts the findings that hold, so it reads what they read (and every run's top-1, and
    # DVT's exit policies).
    "metrics": ("metrics.json", sorted(set(_FINDINGS_INPUTS + files_of(RUNS, "eval.json")
                                           + files_of(DVT_RUN, "policies.json"))), "Data"),
}


def report_outputs() -> list[str]:
    return [f"{REPORT}/{out}" for out, _, _ in REPORT_PARTS.values()] + [f"{REPORT}/index.md"]


# Each part's place within its section of `snakemake --report` (without one Snakemake files it under "Other").
REPORT_SUBCATEGORIES = {"table1": "The paper's tables", "table2": "The paper's tables", "table3": "The paper's tables",
                        "ablation": "Reuse", "policies": "Beyond the paper", "figures": "Every figure",
                        "findings": "Page", "findings_json": "As data", "comparisons": "JSON",
                        "policies_json": "JSON", "metrics": "JSON", "plots": "dvc plots"}


def report_output(part: str):
    """The part's output, marked for `snakemake --report` with its caption (workflow/report/<part>.rst;
    figures: every PNG of the folder)."""
    out, _, category = REPORT_PARTS[part]
    labels = {"category": category, "subcategory": REPORT_SUBCATEGORIES[part],
              "caption": f"../report/{part}.rst"}  # (the caption's path is relative to this file)
    if part == "figures":
        return report(directory(f"{REPORT}/{out}"), patterns=["{name}.png"], **labels)
    if part == "plots":
        return report(directory(f"{REPORT}/{out}"), patterns=["{name}.csv"], **labels)
    return report(f"{REPORT}/{out}", **labels)
