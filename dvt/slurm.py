"""What a SLURM cluster would refuse, refused before Snakemake submits a job.

Snakemake's SLURM executor learns that a partition, an account or a size is wrong only when `sbatch`
refuses it, one job at a time, part-way through a run. This module asks the cluster once, when the
workflow starts (`onstart` in workflow/rules/common.smk, after the jobs to run are known and before
any is submitted), and refuses in one line, naming the rule, the resource and what the cluster has:

* a resource key the executor does not read (a typo such as `slurm_partiton` would be ignored);
* a partition `sinfo` does not list;
* an account the user has no association with (`sacctmgr`), or no account when the user has no
  default one;
* CPUs, memory, GPUs or run time beyond the largest node or the time limit of the partition;
* a training job whose process count is not its GPU count.

It reads only what `sinfo` and `sacctmgr` print, so it is tested with their output and on a real
one-node cluster (tests/test_slurm.py).
"""

from __future__ import annotations

import difflib
import getpass
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dvt.errors import DvtError

# The resources snakemake-executor-plugin-slurm 2.8 reads (its docs and submit_string.py), Snakemake's
# own standard resources, and ours (`processes`: how many training processes torchrun starts).
EXECUTOR_KEYS = frozenset({
    "slurm_partition", "slurm_account", "slurm_extra", "slurm_cluster", "cluster", "clusters", "constraint",
    "qos", "nodes", "tasks", "tasks_per_node", "tasks_per_gpu", "mpi", "cpus_per_task", "cpus_per_gpu",
    "mem_mb_per_cpu", "gpu", "gpu_model", "gres", "runtime",
})
SNAKEMAKE_KEYS = frozenset({"_cores", "_nodes", "tmpdir", "mem", "mem_mb", "mem_mib", "disk", "disk_mb", "disk_mib"})
DVT_KEYS = frozenset({"processes"})
KNOWN_KEYS = EXECUTOR_KEYS | SNAKEMAKE_KEYS | DVT_KEYS


@dataclass(frozen=True)
class Partition:
    """The largest node of a partition and its time limit (None: no limit)."""

    name: str
    cpus: int
    mem_mb: int
    gpus: int
    max_minutes: int | None


@dataclass(frozen=True)
class Request:
    """What one job asks of SLURM, as the executor turns its resources into `sbatch` options."""

    rule: str
    partition: str | None
    account: str | None
    cpus: int
    mem_mb: int | None
    gpus: int
    minutes: int | None
    keys: frozenset[str]
    processes: int | None = None  # training processes the job starts (rule train), one per GPU

    @classmethod
    def of(cls, rule: str, resources: Mapping[str, object], threads: int) -> Request:
        gpus = gpu_count(resources)
        if resources.get("cpus_per_task"):
            cpus = int(resources["cpus_per_task"])
        elif gpus and resources.get("cpus_per_gpu"):
            cpus = int(resources["cpus_per_gpu"]) * gpus
        else:
            cpus = threads
        mem = resources.get("mem_mb")
        if resources.get("mem_mb_per_cpu"):
            mem = int(resources["mem_mb_per_cpu"]) * cpus
        runtime = resources.get("runtime")
        return cls(rule=rule, partition=_text(resources.get("slurm_partition")),
                   account=_text(resources.get("slurm_account")), cpus=max(1, cpus),
                   mem_mb=int(mem) if mem else None, gpus=gpus, minutes=int(runtime) if runtime else None,
                   keys=frozenset(resources),
                   processes=int(resources["processes"]) if resources.get("processes") else None)


def _text(value: object) -> str | None:
    return str(value) if value not in (None, "") else None


def gpu_count(resources: Mapping[str, object]) -> int:
    """GPUs a job asks for: the executor's `gpu` (with or without `gpu_model`) or a `gres` of gpu."""
    if resources.get("gpu"):
        return int(resources["gpu"])
    if resources.get("gpu_model"):
        return 1  # the executor's default count for a model without `gpu`
    name, *rest = str(resources.get("gres") or "").split(":")  # gpu, gpu:2, gpu:a100:2
    if name != "gpu":
        return 0
    return int(rest[-1]) if rest and rest[-1].isdigit() else 1


def parse_minutes(limit: str) -> int | None:
    """A SLURM time limit ("infinite", "30:00", "2:00:00", "3-00:00:00", "1-12") in minutes."""
    if limit in ("infinite", "UNLIMITED", "n/a"):
        return None
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:  # days-hours[:minutes[:seconds]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:  # hours:minutes:seconds
        hours, minutes, seconds = parts
    else:  # minutes[:seconds]
        hours, (minutes, seconds) = 0, (parts + [0])[:2]
    return int(days or 0) * 1440 + hours * 60 + minutes + (seconds > 0)


def parse_partitions(sinfo: str) -> dict[str, Partition]:
    """`sinfo -h -o '%R|%c|%m|%G|%l'` (a line per group of like nodes) -> each partition's largest node."""
    out: dict[str, Partition] = {}
    for line in sinfo.splitlines():
        if not line.strip():
            continue
        name, cpus, mem, gres, limit = line.strip().split("|")
        gpus = sum(gpu_count({"gres": g.split("(")[0]}) for g in gres.split(",") if g.startswith("gpu"))
        node = Partition(name=name, cpus=int(cpus.rstrip("+")), mem_mb=int(mem.rstrip("+")), gpus=gpus,
                         max_minutes=parse_minutes(limit))
        seen = out.get(name)
        out[name] = node if seen is None else Partition(
            name=name, cpus=max(seen.cpus, node.cpus), mem_mb=max(seen.mem_mb, node.mem_mb),
            gpus=max(seen.gpus, node.gpus), max_minutes=seen.max_minutes)
    return out


def _ask(*cmd: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise DvtError(f"{cmd[0]} is not installed here: submit from a machine of the SLURM cluster") from None
    except subprocess.TimeoutExpired:
        raise DvtError(f"`{' '.join(cmd)}` did not answer in 30 s: is the SLURM controller reachable?") from None
    if done.returncode:
        said = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise DvtError(f"`{' '.join(cmd)}` failed ({said}): is the SLURM controller reachable?")
    return done.stdout


def _accounts(user: str) -> tuple[set[str], str | None] | None:
    """The user's accounts and default account, or None where the cluster keeps no accounting."""
    try:
        accounts = _ask("sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=account")
        default = _ask("sacctmgr", "-n", "-P", "show", "user", user, "format=defaultaccount")
    except DvtError:
        return None
    return {a.strip() for a in accounts.splitlines() if a.strip()}, (default.strip() or None)


def check_requests(requests: Iterable[Request], *, partitions: Mapping[str, Partition],
                   accounts: tuple[set[str], str | None] | None, where: str) -> None:
    """DvtError for the first request the cluster would refuse; `where` says where resources are set."""
    for req in requests:
        for key in sorted(req.keys - KNOWN_KEYS):
            near = difflib.get_close_matches(key, sorted(EXECUTOR_KEYS | DVT_KEYS), n=1)
            hint = f"did you mean {near[0]}? " if near else ""
            raise DvtError(f"rule {req.rule}: resource {key!r} is not one the SLURM executor reads, so it would "
                           f"be ignored; {hint}fix it in {where}")
        fix = f"set it in {where} or with --set-resources {req.rule}:"
        if req.processes is not None and req.gpus and req.processes != req.gpus:
            raise DvtError(f"rule {req.rule} asks for {req.gpus} GPUs but would start {req.processes} training "
                           f"processes (one per GPU); {fix}processes={req.gpus}")
        if req.partition is not None and req.partition not in partitions:
            raise DvtError(f"rule {req.rule} asks for partition {req.partition!r}, which sinfo does not list "
                           f"(this cluster has: {', '.join(sorted(partitions))}); {fix}slurm_partition=NAME")
        if accounts is not None:
            mine, default = accounts
            if req.account is not None and req.account not in mine:
                raise DvtError(f"rule {req.rule} asks for account {req.account!r}, which is not one of yours "
                               f"(sacctmgr lists: {', '.join(sorted(mine)) or 'none'}); {fix}slurm_account=NAME")
            if req.account is None and default is None:
                raise DvtError(f"rule {req.rule} names no account and you have no default account; "
                               f"{fix}slurm_account=NAME")
        part = partitions.get(req.partition) if req.partition else None
        if part is None:
            continue  # the cluster's default partition: sbatch decides
        for what, asked, has, key in (("CPUs", req.cpus, part.cpus, "cpus_per_task"),
                                      ("MB of memory", req.mem_mb, part.mem_mb, "mem_mb"),
                                      ("GPUs", req.gpus, part.gpus, "gpu")):
            if asked and asked > has:
                raise DvtError(f"rule {req.rule} asks for {asked} {what} in partition {part.name}, whose largest "
                               f"node has {has}; {fix}{key}=N")
        if req.minutes and part.max_minutes is not None and req.minutes > part.max_minutes:
            raise DvtError(f"rule {req.rule} asks for a run time of {req.minutes} min in partition {part.name}, "
                           f"whose limit is {part.max_minutes} min; {fix}runtime=MINUTES")


def check_cluster(requests: list[Request], *, where: str) -> None:
    """Ask sinfo and sacctmgr, then check every request (DvtError for the first refusal)."""
    if not requests:
        return
    partitions = parse_partitions(_ask("sinfo", "-h", "-o", "%R|%c|%m|%G|%l"))
    check_requests(requests, partitions=partitions, accounts=_accounts(getpass.getuser()), where=where)


def check_before_submitting(workflow) -> None:
    """Snakemake's `onstart` (workflow/rules/cluster.smk): under the SLURM executor, check every job
    that will be submitted; a refusal is one line on stderr and exit status 2, before any submission."""
    plugin = workflow.executor_plugin
    if plugin is None or plugin.name != "slurm":
        return
    jobs = [job for job in workflow.dag.needrun_jobs() if not job.is_local]
    try:
        check_cluster([Request.of(job.rule.name, dict(job.resources.items()), job.threads) for job in jobs],
                      where="workflow/profiles/slurm/resources.yaml")
    except DvtError as err:
        print(f"snakemake: error: {err}", file=sys.stderr)
        sys.exit(2)
