"""The `dvt` commands, one module each (dvt/cli.py maps a command to its module's `run`).

A stage reads its inputs, calls the library (the modules of dvt/ beside this package, named by what they
hold) and writes its outputs atomically. Stages never import each other: what two of them share lives in
the library (dvt.budgets, dvt.checkpoint, dvt.flops, dvt.timing, dvt.data.sources).
"""
