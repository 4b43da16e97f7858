"""Scale-out under ``torchrun``: process-group setup, the DDP wrapper, data sharding, gradient averaging.

Every function works unchanged in a single plain process (no torchrun environment): the process
group is simply never created, ``barrier``/``cleanup`` are no-ops and the sampler yields the whole
batch to rank 0. That keeps one code path for one and N processes.

Batch semantics: ``batch_size`` is the *global* batch (images per optimizer step over all ranks);
each rank loads ``batch_size // world_size`` of them. Rank ``r`` takes slice ``r`` of every global
batch, so the union of the ranks' shards is exactly the single-process batch and a run's result
does not depend on how many processes share it (up to float summation order).
"""

from __future__ import annotations

import gc
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def init_from_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``.

    Creates the process group (nccl on CUDA, gloo on CPU) when ``WORLD_SIZE > 1``; returns
    ``(0, 1, 0)`` without torchrun. Calling it again returns the existing group's numbers.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, 0
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        # one GPU per process: later torch.device("cuda") tensors land on this rank's GPU
        torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl")
    else:
        dist.init_process_group(backend="gloo")
    return rank, world_size, local_rank


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group, ``(0, 1)`` when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on the process that writes files and prints (rank 0, or the only process)."""
    return rank_and_world()[0] == 0


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()


def cleanup(*, synchronize: bool = True) -> None:
    """Destroy the process group if one exists (safe to call more than once).

    On a clean exit (``synchronize``) every rank first meets at a barrier: a rank that tears gloo
    down while a peer is still in its last collective makes that peer abort. After an error, pass
    ``synchronize=False`` so a failing rank never waits for peers that will not arrive.
    """
    if dist.is_available() and dist.is_initialized():
        # A DDP wrapper left in a reference cycle keeps gloo work objects (holding tensors) alive
        # until interpreter shutdown, where freeing them needs the GIL and aborts the process:
        # collect them while the process group and the interpreter are still whole.
        gc.collect()
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def wrap_ddp(model: nn.Module, *, find_unused_parameters: bool = False) -> nn.Module:
    """``model`` in DistributedDataParallel on its own device (``model.module`` is the original).

    ``find_unused_parameters`` costs a graph traversal per step; turn it on only for models whose
    forward leaves trainable parameters without gradient.
    """
    device = next(model.parameters()).device
    device_ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def average_gradients(params: Sequence[nn.Parameter]) -> None:
    """All-reduce the mean gradient of ``params`` that live outside the DDP wrapper (one collective).

    A parameter whose gradient is ``None`` on every rank keeps ``None`` (AdamW then skips it, as it
    would in one process); one that has a gradient on some ranks only counts zeros for the others,
    as DDP itself does.
    """
    world = rank_and_world()[1]
    if world <= 1 or not params:
        return
    device = params[0].device
    flat = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=device) for p in params]
    present = torch.tensor([float(p.grad is not None) for p in params], device=device)
    buffer = torch.cat([*(g.float() for g in flat), present])
    dist.all_reduce(buffer)
    reduced, counts = buffer[: -len(params)], buffer[-len(params) :]
    for p, chunk, count in zip(params, reduced.split([p.numel() for p in params]), counts.tolist()):
        if count > 0:
            p.grad = (chunk / world).view_as(p).to(p.dtype)


def any_flag(flags: Sequence[bool], device: torch.device) -> list[bool]:
    """Element-wise OR of boolean flags over all ranks (one tiny all-reduce; local values alone)."""
    if rank_and_world()[1] <= 1:
        return list(flags)
    tensor = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, indexed by rank, on every rank (``[obj]`` in one process)."""
    world = rank_and_world()[1]
    if world <= 1:
        return [obj]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


class ShardedBatchSampler:
    """This rank's index lists for one epoch, starting at global batch ``start``.

    The epoch order is ``np.random.default_rng((seed, epoch)).permutation(dataset_size)``, padded
    by repeating it until it fills whole global batches (so every rank gets full, equal batches and
    tiny datasets still make a batch). Pass it to a DataLoader as ``batch_sampler``.
    """

    def __init__(
        self, *, dataset_size: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
        start: int = 0,
    ) -> None:
        if dataset_size <= 0:
            raise ValueError("cannot sample batches from an empty dataset")
        if batch_size % world_size:
            raise ValueError(f"global batch_size {batch_size} is not divisible by world size {world_size}")
        self.dataset_size, self.batch_size, self.seed, self.epoch = dataset_size, batch_size, seed, epoch
        self.rank, self.world_size, self.start = rank, world_size, start

    @staticmethod
    def batches_per_epoch(dataset_size: int, batch_size: int) -> int:
        return -(-dataset_size // batch_size)

    def __len__(self) -> int:
        return self.batches_per_epoch(self.dataset_size, self.batch_size) - self.start

    def __iter__(self) -> Iterator[list[int]]:
        total = self.batches_per_epoch(self.dataset_size, self.batch_size) * self.batch_size
        order = np.resize(np.random.default_rng((self.seed, self.epoch)).permutation(self.dataset_size), total)
        per_rank = self.batch_size // self.world_size
        for b in range(self.start, total // self.batch_size):
            first = b * self.batch_size + self.rank * per_rank
            yield order[first : first + per_rank].tolist()


class StopRequest:
    """While active, SIGINT (Ctrl-C) and SIGTERM (kill) only set ``requested``; the loop stops at the
    next step boundary, where weights, optimizer and RNG are consistent. A second signal interrupts
    at once. Installed only in the main thread (Python allows handlers nowhere else)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:  # noqa: PYI034 (Self needs Python 3.11)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def worker_init(worker_id: int) -> None:
    """DataLoader workers ignore Ctrl-C: the main process decides when to stop and shuts them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
