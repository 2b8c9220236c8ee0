# `dvt report --part P` renders one part of reports/; each part needs only the runs it shows, so
# `snakemake reports/table2.md` trains and measures no more than Table 2 needs.

ONE_EXIT = runs_where(lambda rc: rc.num_exits == 1)
CASCADES = runs_where(lambda rc: rc.num_exits > 1)

# part -> (output under report.dir, run files it reads, runs it reads them from)
REPORT_PARTS = {
    "table1": ("table1.md", ["eval.json", "flops.json", "train.json"], ONE_EXIT),
    "table2": ("table2.md", ["eval.json", "budget.csv", "speed.json"], RUNS),
    "table3": ("table3.md", ["eval.json", "budget.csv"], RUNS),
    "ablation": ("ablation.md", ["eval.json", "budget.csv"], CASCADES),
    "figures": ("figures", ["eval.json", "budget.csv", "train_log.csv", "logits.parquet"], RUNS),
    "metrics": ("metrics.json", ["eval.json", "budget.csv", "speed.json"], RUNS),
}


def report_outputs() -> list[str]:
    return [f"{REPORT}/{out}" for out, _, _ in REPORT_PARTS.values()] + [f"{REPORT}/index.md"]


def part_inputs(part: str) -> list[str]:
    _, files, runs = REPORT_PARTS[part]
    return [f"runs/{run}/{name}" for run in runs for name in files]


for _part, (_out, _files, _runs) in REPORT_PARTS.items():

    rule:
        name:
            f"report_{_part}"
        input:
            runs=part_inputs(_part),
            data=DATA,
            templates="reports/templates",
        output:
            directory(f"{REPORT}/{_out}") if _part == "figures" else f"{REPORT}/{_out}",
        params:
            settings=settings("runs", "report"),
        shell:
            dvt("report", f"--part {_part}")


rule report_index:
    input:
        [f"{REPORT}/{out}" for part, (out, _, _) in REPORT_PARTS.items()],
    output:
        f"{REPORT}/index.md",
    params:
        settings=settings("runs", "report"),
    shell:
        dvt("report", "--part index")
