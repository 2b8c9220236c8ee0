"""The names of a run's files, in one place: runs/<run>/seed<S>/<name> (Config.run_dir), except flops.json,
which is runs/<run>/flops.json, shared by the seeds (Config.flops_path). The stage that writes a file and
every reader of it use these names; dvc.yaml and workflow/rules spell the same paths for the engines
(tests/test_pipeline_engines.py checks both against the stages' outputs)."""

CHECKPOINT = "checkpoint.pt"  # train: the finished model
RESUME = "resume.pt"  # train: the state after the last finished epoch, until the run ends
TRAIN_SUMMARY = "train.json"  # train: the summary, with the checkpoint's sha256
TRAIN_LOG = "train_log.csv"  # train: one row per epoch
LOGITS = "logits.parquet"  # collect
FLOPS = "flops.json"  # flops (per run)
BUDGET = "budget.csv"  # budget: one row per budget p
EVAL = "eval.json"  # budget
METRICS = "metrics.json"  # budget: the run's headline, for `dvc exp show`
POLICIES_CSV = "policies.csv"  # policies
POLICIES = "policies.json"  # policies
SPEED = "speed.json"  # speed
