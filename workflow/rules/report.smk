# `dvt report --part P` renders one part of reports/; each part needs only the runs it shows (the
# parts and their inputs are in common.smk). Every part is marked report(), so that
# `snakemake --report report.html` is one self-contained page of the tables, findings and figures.

for _part, (_out, _inputs, _category) in REPORT_PARTS.items():

    rule:
        name:
            f"report_{_part}"
        localrule: True  # seconds of work: not worth a cluster queue
        input:
            runs=sorted(set(_inputs)),
            data=DATA,
            templates="reports/templates",
        output:
            report_output(_part),
        params:
            # The shell command is evaluated when the job runs, after this loop has moved on: the part
            # must travel as a param, not as the loop variable.
            part=_part,
            settings=settings("runs", "seeds", "report"),
        log:
            f"logs/report/{_part}.log",
        benchmark:
            f"logs/report/{_part}.benchmark.tsv"
        conda:
            ENV
        shell:
            logged(dvt("report", "--part {params.part}"))


# The index links every other part, so it comes last.
rule report_index:
    localrule: True
    input:
        [f"{REPORT}/{out}" for out, _, _ in REPORT_PARTS.values()],
        files_of(DVT_RUN, "logits.parquet"),
        templates="reports/templates",
    output:
        report(f"{REPORT}/index.md", category="Report", subcategory="Front page", caption="../report/index.rst"),
    params:
        settings=settings("runs", "seeds", "report"),
    log:
        "logs/report/index.log",
    benchmark:
        "logs/report/index.benchmark.tsv"
    conda:
        ENV
    shell:
        logged(dvt("report", "--part index"))
