# --restart: Snakemake re-runs train only when a setting changed, so a checkpoint of other settings is
# stale. An interrupted job resumes from runs/<run>/seed<S>/resume.pt, which is not an output (Snakemake
# deletes a job's outputs before running it) and so survives. GPUs are asked for in the slurm profile;
# a job given N of them trains in N processes (`dvt train --processes N` starts torchrun).
rule train:
    input:
        DATA,
    output:
        checkpoint=run_file("checkpoint.pt"),
        summary=run_file("train.json"),
        log=run_file("train_log.csv"),
        # DVCLive's last-epoch summary and per-epoch files (dvt/live.py)
        live_metrics=run_file("live/metrics.json"),
        live_plots=directory(run_file("live/plots")),
    params:
        settings=settings("data.image_size", "data.num_workers", "model", "runs.{run}", "train"),
    # For scheduling only: `dvt train` sets torch's threads from train.threads itself, whatever
    # Snakemake's --cores gives the job, so the weights do not depend on the engine.
    threads: CFG.train.threads
    # `processes` is not a result setting: every step sees the same global batch of train.batch_size
    # images whatever the count (tests/test_distributed.py), so changing it retrains nothing.
    resources:
        **cluster_resources("train"),
    log:
        job_files("train")["log"],
    benchmark:
        job_files("train")["benchmark"]
    conda:
        ENV
    shell:
        logged(dvt("train", seed_args(), "--restart", "--processes {resources.processes}"))
