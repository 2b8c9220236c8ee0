# From a trained checkpoint to the numbers the tables need, one job per run, seed and stage (flops:
# one per run, the same for every seed).


rule flops:
    localrule: True  # seconds of work: not worth a cluster queue
    output:
        run_file("flops.json"),
    params:
        settings=settings("data.dataset", "data.image_size", "data.synthetic", "data.cluttered", "model", "runs.{run}"),
    log:
        job_files("flops", "{run}")["log"],
    benchmark:
        job_files("flops", "{run}")["benchmark"]
    conda:
        ENV
    shell:
        logged(dvt("flops", "--run {wildcards.run}"))


rule collect:
    input:
        DATA,
        run_file("checkpoint.pt"),
        run_file("flops.json"),
    output:
        run_file("logits.parquet"),
    params:
        settings=settings("eval.threshold_split", "eval.threads", "train.amp"),
    threads: CFG.eval.threads  # scheduling only, as in rule train
    resources:
        **cluster_resources("collect"),
    log:
        job_files("collect")["log"],
    benchmark:
        job_files("collect")["benchmark"]
    conda:
        ENV
    shell:
        logged(dvt("collect", seed_args()))


rule budget:
    localrule: True  # seconds of work: not worth a cluster queue
    input:
        run_file("checkpoint.pt"),
        run_file("logits.parquet"),
    output:
        metrics=run_file("eval.json"),
        headline=run_file("metrics.json"),
        curve=run_file("budget.csv"),
    params:
        settings=settings("eval.num_budgets", "eval.q_step", "eval.threshold_split", "eval.rounding"),
    log:
        job_files("budget")["log"],
    benchmark:
        job_files("budget")["benchmark"]
    conda:
        ENV
    shell:
        logged(dvt("budget", seed_args()))


rule policies:
    localrule: True  # seconds of work: not worth a cluster queue
    input:
        run_file("checkpoint.pt"),
        run_file("logits.parquet"),
    output:
        curves=run_file("policies.csv"),
        summary=run_file("policies.json"),
    params:
        settings=settings("eval.num_budgets", "eval.q_step", "eval.threshold_split", "eval.rounding", "policies"),
    log:
        job_files("policies")["log"],
    benchmark:
        job_files("policies")["benchmark"]
    conda:
        ENV
    shell:
        logged(dvt("policies", seed_args()))


# Timing wants the machine to itself. Locally the job takes every core Snakemake was given, so no other
# job runs beside it. A cluster run has no --cores: there the job has its allocation to itself
# (cpus_per_task in workflow/profiles/slurm/resources.yaml; add slurm_extra: --exclusive for a whole
# node). speed.threads sets torch's threads either way.
rule speed:
    input:
        DATA,
        run_file("checkpoint.pt"),
        run_file("logits.parquet"),
        run_file("budget.csv"),
    output:
        run_file("speed.json"),
    params:
        settings=settings("speed", "train.amp"),
    threads: workflow.resource_settings.cores or CFG.speed.threads
    resources:
        **cluster_resources("speed"),
    log:
        job_files("speed")["log"],
    benchmark:
        job_files("speed")["benchmark"]
    conda:
        ENV
    shell:
        logged(dvt("speed", seed_args()))
