"""dvt.slurm on sinfo/sacctmgr output as real clusters print it (no cluster needed; the real one is in
test_slurm.py): time limits, partitions, the executor's GPU and CPU forms, and each refusal's line."""

from __future__ import annotations

import pytest

from dvt.errors import DvtError
from dvt.slurm import (
    Partition,
    Request,
    check_requests,
    gpu_count,
    parse_minutes,
    parse_partitions,
)

# Two kinds of GPU node in `gpu`, CPU nodes in `cpu` (sinfo -h -o '%R|%c|%m|%G|%l').
SINFO = """\
cpu|64|256000|(null)|1-00:00:00
gpu|32|512000|gpu:a100:4(S:0-1)|3-00:00:00
gpu|48+|256000|gpu:v100:8|3-00:00:00
debug|4|16000|gpu:1,tmpdisk:100|30:00
"""
PARTITIONS = parse_partitions(SINFO)
ACCOUNTS = ({"proj", "other"}, "proj")


@pytest.mark.parametrize("limit, minutes", [("infinite", None), ("UNLIMITED", None), ("45", 45), ("30:00", 30),
                                            ("30:01", 31), ("2:00:00", 120), ("3-00:00:00", 4320),
                                            ("1-12", 2160), ("1-2:30", 1590)])
def test_time_limits_in_minutes(limit, minutes):
    assert parse_minutes(limit) == minutes


def test_each_partition_is_its_largest_node():
    assert PARTITIONS == {
        "cpu": Partition(name="cpu", cpus=64, mem_mb=256000, gpus=0, max_minutes=1440),
        "gpu": Partition(name="gpu", cpus=48, mem_mb=512000, gpus=8, max_minutes=4320),
        "debug": Partition(name="debug", cpus=4, mem_mb=16000, gpus=1, max_minutes=30),
    }


@pytest.mark.parametrize("resources, gpus", [({}, 0), ({"gpu": 2}, 2), ({"gpu_model": "a100"}, 1),
                                             ({"gpu_model": "a100", "gpu": 4}, 4), ({"gres": "gpu"}, 1),
                                             ({"gres": "gpu:2"}, 2), ({"gres": "gpu:a100:3"}, 3),
                                             ({"gres": "tmpdisk:100"}, 0)])
def test_gpus_in_every_form_the_executor_takes(resources, gpus):
    assert gpu_count(resources) == gpus


def test_cpus_as_the_executor_asks_for_them():
    # cpus_per_task first, then cpus_per_gpu times the GPUs, else the rule's threads (the plugin's order)
    assert Request.of("r", {"cpus_per_task": 6, "cpus_per_gpu": 8, "gpu": 2}, threads=1).cpus == 6
    assert Request.of("r", {"cpus_per_gpu": 8, "gpu": 2}, threads=1).cpus == 16
    assert Request.of("r", {"cpus_per_gpu": 8}, threads=3).cpus == 3
    assert Request.of("r", {"mem_mb_per_cpu": 4000, "cpus_per_task": 4}, threads=1).mem_mb == 16000


def request(**resources) -> Request:
    return Request.of("train", {"slurm_partition": "gpu", **resources}, threads=1)


def refusal(req: Request, accounts=ACCOUNTS) -> str:
    with pytest.raises(DvtError) as err:
        check_requests([req], partitions=PARTITIONS, accounts=accounts, where="resources.yaml")
    assert "\n" not in str(err.value)
    return str(err.value)


def test_what_fits_passes():
    check_requests([request(gpu=8, cpus_per_task=48, mem_mb=512000, runtime=4320, slurm_account="other",
                            processes=8),
                    Request.of("fetch", {"cpus_per_task": 4}, threads=1)],  # the default partition
                   partitions=PARTITIONS, accounts=ACCOUNTS, where="resources.yaml")
    # no accounting on the cluster: accounts are not checked
    check_requests([request(slurm_account="anything")], partitions=PARTITIONS, accounts=None, where="x")


@pytest.mark.parametrize("resources, message", [
    ({"slurm_partition": "a100"}, "rule train asks for partition 'a100', which sinfo does not list (this cluster has: "
                                  "cpu, debug, gpu); set it in resources.yaml or with --set-resources "
                                  "train:slurm_partition=NAME"),
    ({"slurm_account": "nope"}, "rule train asks for account 'nope', which is not one of yours (sacctmgr lists: "
                                "other, proj)"),
    ({"gpu": 9, "processes": 9}, "rule train asks for 9 GPUs in partition gpu, whose largest node has 8"),
    ({"cpus_per_gpu": 16, "gpu": 4, "processes": 4}, "asks for 64 CPUs in partition gpu, whose largest node has 48"),
    ({"mem_mb": 600000}, "asks for 600000 MB of memory in partition gpu, whose largest node has 512000"),
    ({"runtime": 4321}, "asks for a run time of 4321 min in partition gpu, whose limit is 4320 min"),
    ({"gpu": 4, "processes": 1}, "rule train asks for 4 GPUs but would start 1 training processes (one per GPU)"),
    ({"slurm_partiton": "gpu"}, "resource 'slurm_partiton' is not one the SLURM executor reads, so it would be "
                                "ignored; did you mean slurm_partition? fix it in resources.yaml"),
    ({"cpu_per_task": 4}, "did you mean cpus_per_task?"),
])
def test_each_refusal_is_one_line_naming_the_rule_the_value_and_the_cluster(resources, message):
    assert message in refusal(request(**resources))


def test_no_account_is_refused_only_without_a_default_one():
    check_requests([request()], partitions=PARTITIONS, accounts=ACCOUNTS, where="x")
    assert "names no account and you have no default account" in refusal(request(), accounts=({"proj"}, None))
