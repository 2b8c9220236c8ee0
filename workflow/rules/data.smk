rule fetch:
    output:
        directory(DATA),
    params:
        settings=settings("data.dataset", "data.root", "data.source", "data.download", "data.calibration_size",
                          "data.synthetic", "data.cluttered"),
    resources:
        **cluster_resources("fetch"),
    log:
        "logs/fetch.log",
    benchmark:
        "logs/fetch.benchmark.tsv"
    conda:
        ENV
    shell:
        logged(dvt("fetch"))
