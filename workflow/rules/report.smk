# `dvt report --part P` renders one part of reports/; each part needs only the runs it shows, so
# `snakemake reports/table2.md` trains and measures no more than Table 2 needs. Which run plays
# which part (baselines, the DVT run, the ablation) is dvt's own rule, read off the params.

from dvt.reporting.compare import assign_roles
from dvt.reporting.inputs import run_files

_roles = assign_roles(run_files(CFG))
SINGLES = [r.name for r in _roles.singles]
BASELINES = [r.name for r in _roles.baselines]
DVT_RUN = [_roles.dvt.name] if _roles.dvt else []
ABLATION = [r.name for r in _roles.ablation.values() if r is not None]


def files_of(runs: list[str], *names: str) -> list[str]:
    """The named files of every seed of `runs` (flops.json: the run's own)."""
    return [f"runs/{run}/{name}" if name == "flops.json" else f"runs/{run}/seed{seed}/{name}"
            for run in runs for name in names for seed in SEEDS]


# The findings read what Tables 1-3 and the ablation read, and DVT's logits (where images exit).
_FINDINGS_INPUTS = (files_of(DVT_RUN + SINGLES, "eval.json", "budget.csv", "speed.json")
                    + files_of(BASELINES, "eval.json")
                    + files_of(ABLATION, "eval.json", "budget.csv") + files_of(DVT_RUN, "logits.parquet"))

# part -> (output under report.dir, the run files it reads)
REPORT_PARTS = {
    "table1": ("table1.md", files_of(SINGLES + BASELINES, "eval.json", "flops.json")),
    "table2": ("table2.md", files_of(DVT_RUN + SINGLES, "eval.json", "budget.csv", "speed.json")),
    "table3": ("table3.md", files_of(DVT_RUN + SINGLES, "eval.json", "budget.csv")),
    "ablation": ("ablation.md", files_of(ABLATION, "eval.json", "budget.csv")),
    "figures": ("figures", files_of(RUNS, "eval.json", "budget.csv", "train_log.csv")
                + files_of(DVT_RUN, "logits.parquet")),
    "findings": ("findings.md", _FINDINGS_INPUTS),
    "findings_json": ("findings.json", _FINDINGS_INPUTS),
    "comparisons": ("comparisons.json", files_of(DVT_RUN + SINGLES, "eval.json", "budget.csv", "speed.json")
                    + files_of(ABLATION, "eval.json", "budget.csv")),
    # The headline counts the findings that hold, so it reads what they read (and every run's top-1).
    "metrics": ("metrics.json", sorted(set(_FINDINGS_INPUTS + files_of(RUNS, "eval.json")))),
}


def report_outputs() -> list[str]:
    return [f"{REPORT}/{out}" for out, _ in REPORT_PARTS.values()] + [f"{REPORT}/index.md"]


for _part, (_out, _inputs) in REPORT_PARTS.items():

    rule:
        name:
            f"report_{_part}"
        input:
            runs=sorted(set(_inputs)),
            data=DATA,
            templates="reports/templates",
        output:
            directory(f"{REPORT}/{_out}") if _part == "figures" else f"{REPORT}/{_out}",
        params:
            # The shell command is evaluated when the job runs, after this loop has moved on: the part
            # must travel as a param, not as the loop variable.
            part=_part,
            settings=settings("runs", "seeds", "report"),
        shell:
            dvt("report", "--part {params.part}")


# The index links every other part, so it comes last.
rule report_index:
    input:
        [f"{REPORT}/{out}" for out, _ in REPORT_PARTS.values()],
        files_of(DVT_RUN, "logits.parquet"),
        templates="reports/templates",
    output:
        f"{REPORT}/index.md",
    params:
        settings=settings("runs", "seeds", "report"),
    shell:
        dvt("report", "--part index")
