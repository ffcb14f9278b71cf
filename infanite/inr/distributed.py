"""Data-parallel training on ``torch.distributed`` (launched by ``torchrun``, or ``infanite train --nproc N``).

Every rank packs the whole cohort and draws the same global step (the epoch's permutation and the PSF jitter come
from (seed, epoch, step), whatever the world size).  Rank *r* of *N* evaluates the network on its own contiguous
shard of the step's ``n_samples`` targets only; each loss term is its shard's sum divided by the **global** batch's
normaliser (Σw, known to every rank from the global batch) and the parameter penalties are divided by *N*, so the
sum over ranks of the ranks' gradients is exactly the single-process gradient.  That sum is taken by one
``all_reduce`` of every gradient (the shared network, the per-stack latents or per-fetus displacements, the rigid
refinement and the per-stack intensity model alike), so every rank takes the same optimizer step and the loss
curve equals the single-process curve with the same ``n_samples`` up to the order of float additions.

Backends: NCCL on CUDA (rank *r* on ``cuda:LOCAL_RANK``), gloo on CPU.  Rank 0 alone writes the run folder
(checkpoint, log, progress, config, diagnostics) and holds its lock.  A rank that dies (kill -9) closes its
sockets: the others fail in their next collective, and ``torchrun`` stops the job (its elastic agent terminates
the remaining workers); the collectives' ``timeout`` bounds any wait.  A checkpoint records its world size;
``--resume`` with another one is refused.  When training ends every rank meets at a barrier and leaves the group
before rank 0 writes the diagnostics alone; a worker process then ends with ``os._exit`` (``infanite.__main__``),
since gloo's C++ objects can abort at interpreter exit.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

#: environment variables ``torchrun`` sets for each worker
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

#: how long a collective waits for a missing rank before failing (seconds)
COLLECTIVE_TIMEOUT_S = 120


@dataclass
class Ranks:
    """This process's place in the job: ``rank`` of ``world_size`` (1: no distribution)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run folder."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (the first ``n % world_size`` ranks take one more)."""
        base, extra = divmod(int(n), self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def all_reduce_gradients(self, parameters) -> None:
        """Sum every parameter's gradient over the ranks (one flat buffer, one collective).  Parameters without a
        gradient are left without one: which ones have a gradient is the same on every rank (the same code path)."""
        if not self.distributed:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (returned; the input is not modified)."""
        if not self.distributed:
            return values
        total = values.clone()
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
        return total

    def any(self, flag: bool, device) -> bool:
        """True on every rank when ``flag`` is true on some rank (a stop asked on one rank stops them all)."""
        if not self.distributed:
            return bool(flag)
        return bool(self.sum(torch.tensor([1.0 if flag else 0.0], device=device)).item() > 0)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def launched_by_torchrun() -> bool:
    """True in a worker started by ``torchrun`` (or ``infanite train --nproc``) with more than one process."""
    return all(k in os.environ for k in TORCHRUN_ENV) and int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str) -> tuple[Ranks, str]:
    """Join the job ``torchrun`` started, if any: returns (ranks, the device of this rank).

    A CUDA device becomes ``cuda:LOCAL_RANK`` (one GPU per process, NCCL); a CPU job uses gloo.  Outside torchrun
    (or with one process) nothing is initialised and ``device`` is returned unchanged."""
    if not launched_by_torchrun():
        return Ranks(), device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    is_cuda = torch.device(device).type == "cuda"
    if is_cuda:
        if local >= torch.cuda.device_count():
            raise ValueError(f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', '?')} processes on this node, "
                             f"more than its {torch.cuda.device_count()} CUDA device(s): use --nproc-per-node "
                             f"{torch.cuda.device_count()} at most")
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if is_cuda else "gloo",
                                             timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    return Ranks(rank, world, local), device


def teardown(ranks: Ranks) -> None:
    """Leave the job (after the last collective)."""
    if ranks.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def torchrun_command(nproc: int, module_args: list[str]) -> list[str]:
    """The argv that runs ``python -m infanite <module_args>`` in ``nproc`` processes on this machine
    (``torchrun --standalone``: a free local rendezvous port)."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={int(nproc)}",
            "-m", "infanite", *module_args]
