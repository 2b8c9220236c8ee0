"""Several processes per training job (DDP): which one this is, what they share, and how they start.

`dvt train --processes N` starts N copies of `python -m dvt.cli train <the same arguments>` with
torchrun (`torch.distributed.run --standalone --nproc_per_node N`, on gloo without GPUs, nccl with),
running torchrun's launcher inside this process instead of as a child: torchrun itself ends every
failure with exit status 1 after a page of traceback and failure table, whereas here the status of
the process that failed comes back (2 for bad input) and its one-line error is the only line printed
once, however many processes met it. Under a torchrun started by hand (`torchrun -m dvt.cli -- train`)
the processes find each other the same way through WORLD_SIZE, RANK and LOCAL_RANK.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dvt.errors import DvtError

# Environment variable naming the folder where launched processes leave their one-line errors.
ERRORS = "DVT_PROCESS_ERRORS"


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        """This process under torchrun (joining the process group on first use), else the only one."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if os.environ.get(ERRORS):
            _die_with_launcher()
        if not torch.distributed.is_initialized():
            # One group for the life of the process, kept over the seeds it trains in turn: a second
            # init_process_group after destroying the first fails when the ranks reach it at different times.
            torch.distributed.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
            atexit.register(torch.distributed.destroy_process_group)
        return cls(rank=torch.distributed.get_rank(), world=world, local_rank=int(os.environ.get("LOCAL_RANK", 0)))

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The mean of `values` over the processes (the same on every one); `values` as is for one."""
        if self.world == 1:
            return values
        total = values.detach().double().clone()  # float64: the sum of N float32 means loses nothing
        torch.distributed.all_reduce(total)
        return total / self.world

    def gather(self, value: Any) -> list[Any] | None:
        """Every process's `value` (picklable) in rank order on rank 0, None on the others."""
        if self.world == 1:
            return [value]
        values = [None] * self.world if self.main else None
        torch.distributed.gather_object(value, values, dst=0)
        return values

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def check_split(batch_size: int, processes: int) -> None:
    """train.batch_size is the global batch: each of the processes takes an equal slice of it."""
    if batch_size % processes:
        raise DvtError(f"train.batch_size = {batch_size} does not split evenly over {processes} processes; "
                       f"make it a multiple of {processes} or change --processes")


def note_cores(processes: int, threads: int) -> None:
    """Say so when CPU training asks for more threads than this machine lets it have.

    Measured here (2 cores): 2 processes x 2 threads trained an epoch in 13 s, 2 x 1 in 0.3 s, as each
    process's torch threads wait busily for cores the other one holds.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if processes * threads > cores and not torch.cuda.is_available():
        print(f"dvt train: note: {processes} processes x train.threads = {threads} is more threads than the "
              f"{cores} cores here, which can make training many times slower; lower --processes, or "
              "train.threads (a result setting: it retrains)")


def launch(processes: int, args: list[str]) -> int:
    """Run `python -m dvt.cli *args` in `processes` processes; 0, or the exit status of the one that failed.

    A process that fails on bad input leaves its line (hand_over) instead of printing it; the first of
    those lines is printed here, once. torchrun's own log lines would follow every failure (which process
    got which signal), so logging is off in this process while the processes run. torchrun starts each
    process in a session of its own: Ctrl-C reaches only this one, which stops them (KeyboardInterrupt).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    # `--` ends torchrun's options: otherwise it would read our --run as its --run-path.
    torchrun = parse_args(["--standalone", "--nproc_per_node", str(processes), "-m", "dvt.cli", "--", *args])
    # torchrun sets OMP_NUM_THREADS and signal handlers in the launching process and leaves them there.
    environ = dict(os.environ)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}
    with tempfile.TemporaryDirectory(prefix="dvt-processes-") as folder:
        os.environ[ERRORS] = folder
        logging.disable(logging.CRITICAL)
        try:
            run(torchrun)
            status = 0
        except ChildFailedError as err:
            _, first = err.get_first_failure()
            status = first.exitcode if first.exitcode > 0 else 128 - first.exitcode  # -9 (SIGKILL) -> 137
        except SignalException as err:  # torchrun has stopped the processes
            if err.sigval == signal.SIGINT:
                raise KeyboardInterrupt from None
            status = 128 + int(err.sigval)
        finally:
            logging.disable(logging.NOTSET)
            os.environ.clear()
            os.environ.update(environ)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        left = sorted(Path(folder).glob("rank*.json"), key=lambda p: int(p.stem[4:]))
        if left:
            error = json.loads(left[0].read_text())
            print(error["message"], file=sys.stderr)
            status = error["status"]
    return status


def _die_with_launcher() -> None:
    """In a process that `launch` started: end when the launcher ends, even by `kill -9` (Linux).

    torchrun stops its processes when it stops normally or by SIGTERM/SIGINT; killed outright it could
    not, and they would train on in sessions of their own, rank 0 holding the run's lock.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def hand_over(message: str, status: int) -> bool:
    """In a process that `launch` started: leave `message` (one line) and the exit status for the launcher,
    which prints it once (every process may meet the same bad input). False elsewhere: print it yourself."""
    folder = os.environ.get(ERRORS)
    if not folder or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return False
    path = Path(folder) / f"rank{os.environ.get('RANK', '0')}.json"
    path.write_text(json.dumps({"message": message, "status": status}))
    return True


def peer_failed() -> bool:
    """In a process that `launch` started: whether another one has stopped on bad input. Then a broken
    collective here (the peer's sockets closed) is its consequence, not a second error to report."""
    folder = os.environ.get(ERRORS)
    return bool(folder) and any(Path(folder).glob("rank*.json"))
