"""Data parallelism on PyTorch's own engine: torchrun starts the processes, torch.distributed connects them.

- `torchrun --nproc_per_node N train_sft.py ...` gives each process RANK, WORLD_SIZE, LOCAL_RANK and a
  rendezvous address; `init()` reads them and joins the group (gloo on a CPU, NCCL on CUDA; several machines
  through torchrun's usual --nnodes/--rdzv flags). Without torchrun nothing starts, and every helper here is
  the identity: a single process is a world of one and runs exactly as before.
- Every rank draws the step's whole batch from the same seeded stream and keeps its own rows (`shard`), so
  a run is the same at any world size and resumes the same way. Each rank backpropagates its rows' share of
  the global loss, and the gradients are summed over ranks (`all_reduce_`): what DistributedDataParallel
  does, without its wrapper, so the model's seams (`logits_at`, `features`) still work.
- Rank 0 alone writes checkpoints, logs and plots, and prints `world size N` first.
"""

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Sequence, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: str = "cpu"  # where the collectives' buffers live (NCCL reduces CUDA tensors only)

    @property
    def main(self) -> bool:
        return self.rank == 0


WORLD = World()  # this process's place; init() sets it under torchrun


def launched() -> bool:
    """True in a process that torchrun started (it sets WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


def init(device: torch.device, backend: str = "auto", timeout: timedelta | None = None) -> World:
    """Join torchrun's process group (no-op without torchrun). NCCL needs CUDA; gloo runs anywhere.
    `timeout`: how long a collective may wait for the slowest process (torch's default: 30 minutes)."""
    global WORLD
    if not launched() or dist.is_initialized():
        return WORLD
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"unknown backend {backend!r}: use auto, gloo or nccl")
    if backend == "nccl" and (device.type != "cuda" or not torch.cuda.is_available()):
        raise ValueError("backend nccl needs CUDA (a GPU and --device cuda): use --backend gloo")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, **({"timeout": timeout} if timeout else {}))
    WORLD = World(dist.get_rank(), dist.get_world_size(), "cuda" if backend == "nccl" else "cpu")
    return WORLD


def planned_size() -> int:
    """The number of processes torchrun started (1 without torchrun), known before `init` joins them."""
    return int(os.environ.get("WORLD_SIZE", 1))


def check_divides(n: int, what: str) -> None:
    """A global batch must split evenly over the processes: checked before the processes connect, so a bad
    launch is a one-line error, never a hang."""
    if n % planned_size():
        raise ValueError(f"{what} {n} does not split evenly over {planned_size()} processes")


def shard(rows: Sequence[T] | torch.Tensor) -> Sequence[T] | torch.Tensor:
    """This rank's contiguous share of `rows` (a list or a tensor's first dimension); all of them in a world
    of one. Shares differ by at most one row when the count does not divide evenly."""
    n = len(rows)
    return rows[WORLD.rank * n // WORLD.size : (WORLD.rank + 1) * n // WORLD.size]


def all_reduce_(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over the ranks, in place (one flat buffer, one collective)."""
    if WORLD.size == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float().to(WORLD.device) for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def sum_gradients(model: torch.nn.Module, values: list[torch.Tensor]) -> None:
    """Sum every weight's gradient, and `values`, over the ranks, in place; a rank without a gradient for a
    weight (it held no rows) adds zeros."""
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.grad is None else p.grad
    all_reduce_([p.grad for p in model.parameters()] + values)


def sum_over_ranks(values: list[float]) -> list[float]:
    """Each number summed over the ranks (counts and sums for logs and metrics)."""
    if WORLD.size == 1:
        return values
    buffer = torch.tensor(values, dtype=torch.float64, device=WORLD.device)
    dist.all_reduce(buffer)
    return buffer.tolist()


def any_rank(flag: bool) -> bool:
    """True if any rank says so (a stop request reaches the ranks at different moments: they must agree)."""
    if WORLD.size == 1:
        return flag
    value = torch.tensor([float(flag)], device=WORLD.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather(obj):
    """Every rank's `obj`, in rank order, on every rank."""
    if WORLD.size == 1:
        return [obj]
    out = [None] * WORLD.size
    dist.all_gather_object(out, obj)
    return out


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
