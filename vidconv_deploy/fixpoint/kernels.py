"""Op kernels shared by the float calibration pass and the integer reference.

Shape-only ops work on any dtype. The integer kernels take integer-valued tensors (stored as float32,
float64 or int64 by the caller) and return exact integers: a convolution runs in float32 when every
partial sum is below 2**24 (exact), in float64 below 2**53 (exact), and is refused beyond. The same
2**24 bound tells whether ONNX Runtime's float32 fake-quant execution of the op is exact, which
:func:`conv_partial_sum_bound` measures.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from vidconv_deploy.errors import UserError

FLOAT32_EXACT = 1 << 24
FLOAT64_EXACT = 1 << 53
#: Padding value for max pooling of int64 tensors: below any value a graph can hold.
_INT_NEG_INF = -(1 << 62)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch ops on ``count`` intra-op threads inside the block (restored after)."""
    before = torch.get_num_threads()
    if count != before:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if count != before:
            torch.set_num_threads(before)


def single_threaded() -> contextlib.AbstractContextManager[None]:
    """Run torch ops on one thread inside the block (restored after).

    Deploy-graph tensors are small: torch's intra-op thread pool costs more than it gains on them, and on a
    busy machine it collapses (quantizing the vic-nano-dpu later graph took 6.2 s of CPU with 2 threads on
    a loaded 2-core VM, 0.22 s with 1).
    """
    return torch_threads(1)


def attributes(proto: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in proto.attribute}


@dataclass(frozen=True)
class Window:
    """2-D sliding-window geometry of Conv / MaxPool / AveragePool in torch's terms."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    dilations: tuple[int, int]

    def torch_pad(self) -> tuple[int, int, int, int]:
        top, left, bottom, right = self.pads
        return (left, right, top, bottom)

    def padded(self, x: torch.Tensor, value: float = 0.0) -> torch.Tensor:
        return F.pad(x, self.torch_pad(), value=value) if any(self.pads) else x


def constant_input(proto: onnx.NodeProto, index: int, initializers: Mapping[str, np.ndarray], label: str) -> np.ndarray | None:
    """A node's constant argument (shape, axes, split sizes, clip bound), or None if absent.

    Both the calibration pass and the integer reference need these as numbers, not tensors, so one
    computed at run time is refused with the fix.
    """
    if index >= len(proto.input) or not proto.input[index]:
        return None
    name = proto.input[index]
    if name not in initializers:
        raise UserError(f"node {label}: input {name!r} must be a constant; fold shape computations with onnxsim")
    return initializers[name]


def window(proto: onnx.NodeProto, kernel: tuple[int, int]) -> Window:
    """The window of a 2-D Conv or pooling node; auto_pad SAME_* and ceil_mode that changes the shape are
    refused (the deploy exporter writes explicit pads)."""
    a = attributes(proto)
    if len(kernel) != 2:
        raise UserError(f"node {proto.name} ({proto.op_type}) is not 2-D; only NCHW 2-D windows are supported")
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad not in ("NOTSET", "VALID"):
        raise UserError(f"node {proto.name} uses auto_pad={auto_pad}; export with explicit pads (torch.onnx does)")
    pads = tuple(a.get("pads", (0, 0, 0, 0))) if auto_pad == "NOTSET" else (0, 0, 0, 0)
    top, left, bottom, right = pads[0], pads[1], pads[2], pads[3]
    win = Window(tuple(kernel), tuple(a.get("strides", (1, 1))), (top, left, bottom, right), tuple(a.get("dilations", (1, 1))))
    if a.get("ceil_mode", 0):
        raise UserError(f"node {proto.name} uses ceil_mode=1; the DPU flow needs floor mode (ceil_mode=False in PyTorch)")
    return win


# ---- shape-only ops (any dtype) ----------------------------------------------------------------


def reshape(x: torch.Tensor, shape: np.ndarray, allowzero: int = 0) -> torch.Tensor:
    dims = [int(d) for d in shape]
    if not allowzero:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def flatten(x: torch.Tensor, axis: int = 1) -> torch.Tensor:
    axis = axis % x.dim() if x.dim() else 0
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


def squeeze(x: torch.Tensor, axes: np.ndarray | None) -> torch.Tensor:
    if axes is None:
        return x.squeeze()
    for ax in sorted((int(a) % x.dim() for a in axes), reverse=True):
        x = x.squeeze(ax)
    return x


def unsqueeze(x: torch.Tensor, axes: np.ndarray) -> torch.Tensor:
    rank = x.dim() + len(axes)
    for ax in sorted(int(a) % rank for a in axes):
        x = x.unsqueeze(ax)
    return x


def split(x: torch.Tensor, axis: int, sizes: np.ndarray | None, outputs: int) -> list[torch.Tensor]:
    if sizes is None:
        length = x.shape[axis]
        chunk = -(-length // outputs)
        sizes = np.array([min(chunk, length - i * chunk) for i in range(outputs)])
    return list(torch.split(x, [int(s) for s in sizes], dim=axis))


def slice_(x: torch.Tensor, starts: np.ndarray, ends: np.ndarray, axes: np.ndarray | None, steps: np.ndarray | None) -> torch.Tensor:
    axes = np.arange(len(starts)) if axes is None else axes
    steps = np.ones(len(starts), dtype=np.int64) if steps is None else steps
    index: list[slice] = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step <= 0:
            raise UserError("Slice with a negative step is not supported; the DPU slices forward only")
        dim = x.shape[int(axis)]
        start = int(np.clip(start + dim if start < 0 else start, 0, dim))
        end = int(np.clip(end + dim if end < 0 else end, 0, dim))
        index[int(axis) % x.dim()] = slice(start, end, int(step))
    return x[tuple(index)]


# ---- exact integer kernels ---------------------------------------------------------------------


def exact_dtype(bound: float, what: str) -> torch.dtype:
    """float32 when every partial sum is below 2**24 (``bound``), float64 below 2**53; else refuse."""
    if bound < FLOAT32_EXACT:
        return torch.float32
    if bound < FLOAT64_EXACT:
        return torch.float64
    raise UserError(f"{what}: partial sums reach {bound:.3g}, beyond exact float64 integers (2**53); the positions are broken")


#: A convolution with at least this many multiply-adds runs on the caller's ``workers`` intra-op threads
#: (:func:`conv_int`), and so does any op whose first input has at least :data:`THREADED_MIN_ELEMENTS`
#: (:func:`op_threads`). The integer reference runs torch single-threaded: its graphs hold many small ops,
#: on which OpenMP teams cost more than they gain and collapse on a busy machine; but one feed alone would
#: leave the other cores idle during the large ones (ViC-T 224 on 2 idle cores, one feed, medians of 21 and 5
#: runs interleaved with ONNX Runtime's: early graph 67 -> 43 ms, later 807 -> 481 ms; ORT 38 and 410 ms).
THREADED_MIN_MACS = 1 << 22
THREADED_MIN_ELEMENTS = 1 << 18


def op_threads(elements: int, workers: int) -> int:
    """Intra-op threads for an op whose first input has ``elements``: ``workers`` when large, else 1 (torch
    itself runs elementwise passes under 32768 elements on one thread, but a convolution on every thread)."""
    return workers if elements >= THREADED_MIN_ELEMENTS else 1


def conv_int(x: torch.Tensor, w: torch.Tensor, win: Window, group: int, dtype: torch.dtype, workers: int = 1,
             bias: torch.Tensor | None = None) -> torch.Tensor:
    """Exact integer convolution of integer-valued ``x`` (NCHW) by ``w`` (OIHW) plus an integer ``bias`` per
    output channel, computed in ``dtype``. The caller picks ``dtype`` with :func:`exact_dtype` from a bound
    of the partial sums (the bias included), so the float convolution is exact whatever order the library
    sums in, on any number of threads: a large one runs on ``workers`` (:data:`THREADED_MIN_MACS`). The result
    stays in ``dtype``."""
    x, w = win.padded(x.to(dtype)), w.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    threads = workers if workers > 1 and _macs(x, w, win) >= THREADED_MIN_MACS else 1
    with torch_threads(threads):
        return F.conv2d(x, w, bias, stride=win.strides, dilation=win.dilations, groups=group)


def _macs(x: torch.Tensor, w: torch.Tensor, win: Window) -> int:
    """About the multiply-adds of a convolution of padded ``x`` by ``w`` (output size from the strides)."""
    return x.shape[0] * math.prod(w.shape) * (x.shape[2] // win.strides[0]) * (x.shape[3] // win.strides[1])


def conv_partial_sum_bound(x: torch.Tensor, w: torch.Tensor, win: Window, group: int) -> torch.Tensor:
    """Per output element, sum |w| * |x| over its window (float64): an upper bound of every partial sum any
    summation order forms (the float32 exactness test for ONNX Runtime's Conv)."""
    x, w = x.to(torch.float64).abs(), w.to(torch.float64).abs()
    return F.conv2d(win.padded(x), w, stride=win.strides, dilation=win.dilations, groups=group)


def matmul_partial_sum_bound(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a.to(torch.float64).abs(), b.to(torch.float64).abs())


def maxpool_int(x: torch.Tensor, win: Window) -> torch.Tensor:
    """Max pooling of integer-valued ``x``; padding never wins (-inf, or below any int64 value a graph holds)."""
    pad = float("-inf") if x.is_floating_point() else _INT_NEG_INF
    return F.max_pool2d(win.padded(x, value=pad), win.kernel, win.strides, dilation=win.dilations)


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def log2_exact(value: float) -> int | None:
    """k with value == 2**k, or None."""
    mant, exp = math.frexp(value)
    return exp - 1 if mant == 0.5 else None
