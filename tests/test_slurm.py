"""The cluster path on a real SLURM scheduler: slurmctld, slurmd, slurmdbd and MariaDB on this machine
(tests/slurm/cluster.sh), driven through snakemake-executor-plugin-slurm and workflow/profiles/slurm.

Checked on the tiny pipeline of test_pipeline_runs.py:
* the profile runs it to the rendered reports by sbatch, with the same bytes as a local
  `snakemake --cores 2`, and sacct lists one job per cluster rule instance with the profile's
  partition, CPUs, memory, GPUs and time limit (the cheap rules run locally);
* what the cluster would refuse (partition, account, sizes, a misspelt key) is one line before any
  submission; a submission that sbatch refuses anyway deletes nothing, under both profiles;
* a training job given 2 GPUs trains in 2 torchrun processes, and when it is cancelled half-way the
  same command resumes it to the weights of an uninterrupted 2-process run.

Run them alone with `pytest -m slurm` (5.4 min alone on 2 cores; `make test` runs them beside the rest).
They need root and Debian's slurm-wlm, slurmdbd, munge and mariadb-server (`make test` installs them
as root on Debian); elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from tests.helpers import (
    BIN,
    REPO,
    TIMED,
    engine_env,
    sh,
    tiny_params,
    tiny_repo,
    tree_hashes,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# The plugin waits 40 s before its first status query (kind to a busy slurmctld); the tiny jobs take
# seconds, so the tests ask every 2 s instead. Otherwise the commands are the README's.
PROFILE = ["--workflow-profile", "workflow/profiles/slurm", "--slurm-init-seconds-before-status-checks", "2"]
CLUSTER_RULES = {"fetch", "train", "collect", "speed"}  # the rest are localrules


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> Path:
    """A running one-node cluster for the session (its state folder)."""
    tools = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch", "sacct")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"SLURM is not installed here (no {', '.join(missing)}); as root on Debian `make test` "
                    "installs slurm-wlm slurmdbd munge mariadb-server")
    if os.geteuid() != 0:
        pytest.skip("the test cluster's daemons need root")
    if Path("/etc/slurm/slurm.conf").exists() and not Path("/etc/slurm/slurm.conf").is_symlink():
        pytest.skip("this machine has a SLURM installation of its own (/etc/slurm/slurm.conf)")
    state = tmp_path_factory.mktemp("slurm")
    script = REPO / "tests" / "slurm" / "cluster.sh"
    started = subprocess.run([str(script), "start", str(state)], capture_output=True, text=True)
    assert started.returncode == 0, started.stdout + started.stderr
    yield state
    subprocess.run([str(script), "stop", str(state)], capture_output=True, text=True)


def slurm_params(**train) -> dict:
    # The reference CNN is left out: two runs show every rule, and the 2-core machine runs the jobs.
    params = tiny_params()
    params["runs"] = {"single": {"grids": [4]}, "dvt": {"grids": [2, 4]}}
    params["train"].update(train)
    return params


def repo_with(root: Path, params: dict) -> Path:
    tiny_repo(root)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def snakemake(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=root, capture_output=True, text=True,
                          env=engine_env())


def sacct(since: str) -> list[dict[str, str]]:
    """Every allocation (no job steps) that started since `since`, with its rule from the comment."""
    fields = ["JobID", "JobName", "Partition", "AllocCPUS", "ReqMem", "Timelimit", "State", "AllocTRES", "Comment"]
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-S", since, "-o", ",".join(fields)],
                         capture_output=True, text=True, check=True).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]


def sacct_until(since: str, wanted: Callable[[dict[str, str]], bool], timeout: float = 60) -> list[dict[str, str]]:
    """The jobs of `sacct(since)` that are `wanted`, waiting up to `timeout` s for the first to appear:
    slurmctld hands job records to slurmdbd asynchronously, and on a loaded machine a job that is already
    running can take seconds to reach the accounting database."""
    deadline = time.monotonic() + timeout
    while not (jobs := [j for j in sacct(since) if wanted(j)]) and time.monotonic() < deadline:
        time.sleep(1)
    return jobs


def megabytes(size: str) -> int:
    """sacct's ReqMem ("62.50G", "16000M") in MB."""
    scale = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 ** 2}[size[-1]]
    return round(float(size[:-1]) * scale)


def gpus(job: dict[str, str]) -> int:
    """The GPUs SLURM allocated to a job (sacct's AllocTRES, e.g. "billing=8,cpu=8,gres/gpu=1,...")."""
    return int(dict(t.split("=", 1) for t in job["AllocTRES"].split(",") if "=" in t).get("gres/gpu", 0))


def submitted(result: subprocess.CompletedProcess) -> int:
    return (result.stdout + result.stderr).count("has been submitted with SLURM jobid")


@pytest.fixture(scope="module")
def on_slurm(slurm, tmp_path_factory) -> dict:
    """The tiny pipeline run by the SLURM profile, and beside it by a local `snakemake --cores 2`."""
    base = tmp_path_factory.mktemp("slurm-e2e")
    cluster, local = repo_with(base / "cluster", slurm_params()), repo_with(base / "local", slurm_params())
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    jobs = {"cluster": subprocess.Popen([str(BIN / "snakemake"), *PROFILE], cwd=cluster, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, env=engine_env()),
            "local": subprocess.Popen([str(BIN / "snakemake"), "--cores", "2"], cwd=local, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, env=engine_env())}
    said = {name: job.communicate()[0] for name, job in jobs.items()}
    for name, job in jobs.items():
        assert job.returncode == 0, f"{name} failed:\n{said[name]}"
    return {"cluster": cluster, "local": local, "since": since, "log": said["cluster"]}


def test_the_profile_runs_the_pipeline_by_sbatch_with_local_bytes(on_slurm):
    cluster, local = tree_hashes(on_slurm["cluster"]), tree_hashes(on_slurm["local"])
    assert set(cluster) == set(local)
    compared = [p for p in local if not TIMED.search(p)]
    assert {p.rsplit("/", 1)[-1] for p in compared} >= {"checkpoint.pt", "logits.parquet", "eval.json", "table1.md",
                                                         "index.md", "accuracy_vs_gmacs.png"}
    assert [p for p in compared if cluster[p] != local[p]] == []
    # A log per job: the stage's own and SLURM's.
    assert (on_slurm["cluster"] / "logs" / "train" / "dvt" / "seed42.log").read_text().strip()
    assert list((on_slurm["cluster"] / "logs" / "slurm" / "rule_train").rglob("*.log"))
    assert "Nothing to be done" in snakemake(on_slurm["cluster"], *PROFILE, "-n").stdout


def test_sacct_lists_one_job_per_cluster_rule_with_the_profiles_resources(on_slurm):
    jobs = sacct(on_slurm["since"])
    # the executor names every job of a run after the run's id and comments it rule_<rule>_wildcards_...
    run_ids = {line.split()[-1] for line in on_slurm["log"].splitlines() if line.startswith("SLURM run ID:")}
    jobs = [j for j in jobs if j["JobName"] in run_ids]
    rules = sorted(j["Comment"].removeprefix("rule_").split("_wildcards_")[0] for j in jobs)
    assert rules == ["collect", "collect", "fetch", "speed", "speed", "train", "train"]
    assert {j["State"] for j in jobs} == {"COMPLETED"}
    asked = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "resources.yaml").read_text())
    wanted = {  # partition, CPUs, memory, time limit, GPUs: what resources.yaml asks of each rule
        "fetch": ("cpu", asked["fetch"]["cpus_per_task"], 16000, "01:00:00", 0),
        "train": ("gpu", asked["train"]["cpus_per_gpu"], 64000, "3-00:00:00", 1),
        "collect": ("gpu", asked["collect"]["cpus_per_task"], 16000, "02:00:00", 1),
        "speed": ("gpu", asked["speed"]["cpus_per_task"], 16000, "01:00:00", 1),
    }
    for job in jobs:
        rule = job["Comment"].removeprefix("rule_").split("_wildcards_")[0]
        got = (job["Partition"], int(job["AllocCPUS"]), megabytes(job["ReqMem"]), job["Timelimit"], gpus(job))
        assert got == wanted[rule], (rule, job)


# The default profile (workflow/profiles/default, which Snakemake reads when no other is named) with
# the SLURM executor, as a user without our profile would run it.
DEFAULT = ["--executor", "slurm", "--jobs", "2", "--slurm-init-seconds-before-status-checks", "2"]


@pytest.mark.parametrize("engine, setting, message", [
    (PROFILE, "collect:slurm_partition=nope", "rule collect asks for partition 'nope', which sinfo does not list"),
    (DEFAULT, "collect:slurm_partition=nope", "rule collect asks for partition 'nope', which sinfo does not list"),
    (PROFILE, "collect:slurm_account=nope", "rule collect asks for account 'nope', which is not one of yours"),
    (DEFAULT, "train:slurm_account=nope", "rule train asks for account 'nope', which is not one of yours"),
    (PROFILE, "collect:mem_mb=500000",
     "rule collect asks for 500000 MB of memory in partition gpu, whose largest node has 128000"),
    # (time limits, misspelt keys and GPU/process mismatches: test_slurm_checks.py, on sinfo's output)
], ids=lambda v: "profile" if v is PROFILE else "default" if v is DEFAULT else None)
def test_what_the_cluster_would_refuse_is_one_line_before_any_submission(on_slurm, tmp_path, engine, setting, message):
    root = Path(shutil.copytree(on_slurm["cluster"], tmp_path / "repo", symlinks=True))
    before = tree_hashes(root, ("data", "runs", "reports"))
    out = snakemake(root, *engine, "-R", setting.split(":")[0], "--set-resources", setting)
    assert out.returncode == 2, out.stdout + out.stderr
    said = [line for line in (out.stdout + out.stderr).splitlines() if message in line]
    assert len(said) == 1 and said[0].startswith("snakemake: error: "), out.stdout + out.stderr
    assert submitted(out) == 0
    assert tree_hashes(root, ("data", "runs", "reports")) == before


@pytest.mark.parametrize("profile", ["slurm", "default"])
def test_a_submission_sbatch_refuses_deletes_nothing(on_slurm, tmp_path, profile):
    """An sbatch refusal the workflow cannot foresee (a node feature nobody has): the job fails, and the
    finished logits it was to replace stay byte for byte (Snakemake used to delete them)."""
    root = Path(shutil.copytree(on_slurm["cluster"], tmp_path / "repo", symlinks=True))
    before = tree_hashes(root, ("data", "runs", "reports"))
    engine = PROFILE if profile == "slurm" else DEFAULT
    # --retries 0: the profile's one retry would meet the same refusal.
    out = snakemake(root, *engine, "--retries", "0", "-R", "collect", "--set-resources", "collect:constraint=nofeature")
    assert out.returncode == 1 and "Invalid feature specification" in out.stdout + out.stderr
    assert "Removing output files" not in out.stdout + out.stderr
    assert tree_hashes(root, ("data", "runs", "reports")) == before


def state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_a_cancelled_two_gpu_training_job_resumes_to_the_uninterrupted_weights(slurm, tmp_path):
    """train:gpu=2 starts 2 torchrun processes in one job (gloo on the CPU: the test's GPUs are stand-ins);
    scancel after the first epoch, the same command again, and the weights equal an uninterrupted run's."""
    # one thread per process (two processes on the 2-core machine); epochs of about a second: time to
    # cancel in after the first
    params = slurm_params(epochs=4, threads=1)
    params["data"]["synthetic"]["train_size"] = 1600
    root, reference = repo_with(tmp_path / "cluster", params), repo_with(tmp_path / "reference", params)
    target = "runs/dvt/seed42/checkpoint.pt"
    command = [*PROFILE, "--retries", "0", "--set-resources", "train:gpu=2", "--", target]
    # The reference: the same two-process training, uninterrupted, on this machine (in turn, not side by
    # side: the cancelled run needs its epochs to be slow enough to cancel in).
    sh(reference, str(BIN / "dvt"), "fetch")
    sh(reference, str(BIN / "dvt"), "train", "--run", "dvt", "--seed", "42", "--processes", "2")

    job = subprocess.Popen([str(BIN / "snakemake"), *command], cwd=root, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=engine_env())
    resume = root / "runs" / "dvt" / "seed42" / "resume.pt"
    deadline = time.monotonic() + 300
    while not resume.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert resume.exists(), job.communicate()[0]
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 600))
    name = run_id(root)
    subprocess.run(["scancel", "--name", name], check=True)
    # --set-resources train:gpu=2 changed the GPUs (and so the processes and CPUs per GPU) and kept the
    # rest of resources.yaml: partition, memory, time limit
    (train,) = sacct_until(since, lambda j: j["JobName"] == name and "rule_train" in j["Comment"])
    assert (train["Partition"], int(train["AllocCPUS"]), megabytes(train["ReqMem"]), train["Timelimit"], gpus(train)) \
        == ("gpu", 16, 64000, "3-00:00:00", 2)
    first = job.communicate()[0]
    assert job.returncode == 1 and "CANCELLED" in first, first
    assert not (root / target).exists()

    again = snakemake(root, *command)
    assert again.returncode == 0, again.stdout + again.stderr
    log = (root / "logs" / "train" / "dvt" / "seed42.log").read_text()
    assert re.search(r"resuming after epoch [123] of 4", log), log
    ours, theirs = state_dict(root / target), state_dict(reference / target)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert "processes" in (root / "runs" / "dvt" / "seed42" / "train.json").read_text()


def run_id(root: Path) -> str:
    """The job name of the newest SLURM run started in root (the executor's run id)."""
    logs = sorted((root / ".snakemake" / "log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    for line in logs[-1].read_text().splitlines():
        if line.startswith("SLURM run ID:"):
            return line.split()[-1]
    raise AssertionError("no SLURM run ID in the Snakemake log")
