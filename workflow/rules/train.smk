# --restart: Snakemake re-runs train only when a setting changed, so a checkpoint of other settings is
# stale. An interrupted job resumes from runs/<run>/seed<S>/resume.pt, which is not an output (Snakemake
# deletes a job's outputs before running it) and so survives. GPUs are asked for in the slurm profile.
rule train:
    input:
        DATA,
    output:
        checkpoint=run_file("checkpoint.pt"),
        summary=run_file("train.json"),
        log=run_file("train_log.csv"),
    params:
        settings=settings("data.image_size", "model", "runs.{run}", "train", "eval.batch_size"),
    # train.threads null: one thread per job, and Snakemake runs --cores jobs side by side (faster on a
    # CPU than fewer jobs with more threads each); Snakemake passes it on as OMP_NUM_THREADS.
    threads: CFG.train.threads or 1
    shell:
        dvt("train", seed_args(), "--restart")
