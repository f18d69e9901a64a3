"""Where a training run computes: the device, mixed precision, and the processes of a torchrun launch.

A run of several processes is PyTorch's own: torchrun (``python -m torch.distributed.run``) starts
one process per GPU (or per CPU slot) and tells each who it is through the environment: ``RANK``
(0 .. ``WORLD_SIZE``-1 over every node), ``WORLD_SIZE`` and ``LOCAL_RANK`` (its GPU on its node).
Each process then joins one process group (NCCL between GPUs, gloo between CPU processes), the
model is wrapped in DistributedDataParallel, which averages the gradients of every step, and each
process reads its own share of the videos. A process started without torchrun is a world of one
and trains exactly as before.

The gradients of one step are the mean over every clip of the step whichever the number of
processes (the loop weights each process's loss by its share of the clips), so ``--batch`` is the
batch of the whole run and a 2-process run follows a 1-process run to float rounding, except where
the maths differs: BatchNorm's batch statistics are per process (unless SyncBatchNorm), drop path
draws its masks per process, and an epoch whose videos do not split evenly repeats a few.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from vidconv_deploy.errors import UserError

T = TypeVar("T")
#: What torchrun sets in every process it starts.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
#: How long a process waits for the others at a collective. Each epoch every process scores its share of
#: the validation split (a Kinetics epoch ends with ~20k videos), so the fastest waits for the slowest.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=1)


@dataclasses.dataclass(frozen=True)
class World:
    """This process among the run's processes: ``rank`` of ``size``, and ``local_rank`` on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes state, weights, model card, progress bars and notes."""
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This process's share of ``items`` (every ``size``-th, from ``rank``): together the processes cover each once."""
        return list(items[self.rank::self.size])


def world_from_env(env: Mapping[str, str] | None = None) -> World:
    """The world torchrun describes in ``env`` (default ``os.environ``); a world of one without torchrun."""
    env = os.environ if env is None else env
    given = {name: env.get(name) for name in TORCHRUN_ENV}
    if all(value is None for value in given.values()):
        return World()
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise UserError(f"{' and '.join(missing)} not set while {' and '.join(n for n in TORCHRUN_ENV if n not in missing)} "
                        f"{'is' if len(missing) == 2 else 'are'}: start several processes with torchrun, which sets all three, "
                        f"or unset them to train in one process")
    try:
        rank, size, local_rank = (int(str(given[name])) for name in TORCHRUN_ENV)
    except ValueError:
        raise UserError(f"RANK={given['RANK']} WORLD_SIZE={given['WORLD_SIZE']} LOCAL_RANK={given['LOCAL_RANK']} are not "
                        f"all whole numbers: start several processes with torchrun, which sets them") from None
    if not (size >= 1 and 0 <= rank < size and local_rank >= 0):
        raise UserError(f"RANK={rank} WORLD_SIZE={size} LOCAL_RANK={local_rank} is no process of a run (RANK goes from 0 "
                        f"to WORLD_SIZE-1): start several processes with torchrun, which sets them")
    return World(rank, size, local_rank)


def pick_device(choice: str, world: World) -> torch.device:
    """``--device``: ``auto`` is CUDA where PyTorch sees a GPU, else the CPU; each process of a node takes GPU ``LOCAL_RANK``."""
    if choice not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {choice} is not a device: give auto, cpu or cuda")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("--device cuda, but PyTorch sees no CUDA GPU (a CPU-only build of torch, or no driver): "
                        "give --device cpu, or install a CUDA build of torch")
    gpus = torch.cuda.device_count()
    if world.local_rank >= gpus:
        raise UserError(f"process LOCAL_RANK {world.local_rank} has no GPU of its own on this node ({gpus} GPUs): start at "
                        f"most {gpus} processes per node (torchrun --nproc-per-node {gpus})")
    return torch.device("cuda", world.local_rank)


def amp_dtype(device: torch.device) -> torch.dtype:
    """The autocast type of ``--amp``: bfloat16 where the device computes it (CPUs, GPUs from Ampere on), else float16.

    bfloat16 has float32's range, so its gradients need no loss scaling; float16 (older GPUs) does.
    """
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def backend_for(device: torch.device) -> str:
    """The process group's backend: NCCL between CUDA GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


@dataclasses.dataclass(frozen=True)
class Runtime:
    """How a run computes: ``device``, the autocast type (``None``: float32), the processes, SyncBatchNorm."""

    device: torch.device = torch.device("cpu")
    amp: torch.dtype | None = None
    world: World = World()
    sync_bn: bool = False

    def autocast(self) -> AbstractContextManager[Any]:
        """Mixed precision for the forward pass and loss with ``--amp``, nothing without."""
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp is not None else nullcontext()

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling, on only for float16 (bfloat16 and float32 gradients do not underflow)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)

    def batch_per_process(self, batch: int) -> int:
        """Each process's share of ``--batch`` (the clips of one step over the whole run)."""
        if batch % self.world.size:
            lower = batch - batch % self.world.size
            fix = f"--batch {lower} or {lower + self.world.size}" if lower else f"--batch {self.world.size}"
            raise UserError(f"--batch {batch} does not split over {self.world.size} processes: give a multiple of "
                            f"{self.world.size}, e.g. {fix}")
        return batch // self.world.size

    def describe(self) -> str:
        """The machine for a model card: processes, what each computes on, and the precision."""
        if self.device.type == "cuda":
            each = torch.cuda.get_device_name(self.device)
        else:
            each = f"{torch.get_num_threads()} CPU thread{'s' if torch.get_num_threads() > 1 else ''}"
        processes = f"{self.world.size} processes x " if self.world.size > 1 else ""
        precision = f", AMP {str(self.amp).removeprefix('torch.')}" if self.amp is not None else ""
        return f"{processes}{each}{precision}"


def start_runtime(device: str = "auto", amp: bool = False, sync_bn: bool = False, env: Mapping[str, str] | None = None
                  ) -> Runtime:
    """The runtime the training flags ask for, in the world torchrun describes; refused before any work if it cannot run."""
    world = world_from_env(env)
    chosen = pick_device(device, world)
    if sync_bn and chosen.type != "cuda":
        raise UserError("--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm does not run on the CPU): "
                        "drop --sync-bn, or train with --device cuda")
    return Runtime(chosen, amp_dtype(chosen) if amp else None, world, sync_bn)


@contextmanager
def process_group(runtime: Runtime) -> Iterator[None]:
    """Join the run's process group for the body (nothing to join in a world of one), and leave it after."""
    world = runtime.world
    if world.size == 1:
        yield
        return
    if runtime.device.type == "cuda":
        torch.cuda.set_device(runtime.device)
    dist.init_process_group(backend_for(runtime.device), rank=world.rank, world_size=world.size,
                            timeout=COLLECTIVE_TIMEOUT)
    try:
        yield
    except BaseException:
        dist.destroy_process_group()  # torchrun stops the other processes when one fails
        raise
    # Every process leaves together: rank 1 tearing its group down while rank 0 still scored and wrote the
    # student aborted it now and then ("terminate called without an active exception": 3 of 7 two-process
    # finetune runs here, 0 of 6 with the barrier). The others wait up to COLLECTIVE_TIMEOUT for rank 0.
    dist.barrier()
    dist.destroy_process_group()


def distributed() -> bool:
    """Whether this process is in a process group of several (only then do the collectives below talk)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def main_process() -> bool:
    """Whether this process speaks for the run: the only one, or rank 0 of a process group."""
    return not distributed() or dist.get_rank() == 0


def all_sum(values: Sequence[float]) -> list[float]:
    """``values`` summed over every process of the run (in float64; unchanged in a world of one)."""
    if not distributed():
        return [float(v) for v in values]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def all_gather(value: T) -> list[T]:
    """Every process's ``value`` (picklable), by rank; ``[value]`` in a world of one."""
    if not distributed():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


class OnDevice(nn.Module):
    """``model`` on its device for callers that feed and read CPU tensors (the evaluation runners)."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.model = model
        self.device = device

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        outputs = self.model(*(x.to(self.device) for x in inputs))
        return getattr(outputs, "value", outputs).cpu()  # a Brevitas QuantTensor: its float value


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` as the evaluation runners can call it: itself on the CPU, wrapped in :class:`OnDevice` on a GPU."""
    return model if device.type == "cpu" else OnDevice(model, device)
