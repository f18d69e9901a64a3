"""Pure-integer execution of a QDQ ONNX graph with power-of-two scales (what a DPU computes).

Every tensor is an integer array ``v`` with an exponent ``e`` (value = v * 2**-e): int8 codes from a
QuantizeLinear or an int8 initializer, accumulators inside an op, and dyadic constants (the DPU's pool
multipliers, LeakyReLU's 26/256, clip bounds). Ops combine them exactly: products add exponents, sums
align to the finer exponent by left shifts, and a QuantizeLinear is a shift by ``e - fix_point`` with
the selected rounding, then saturation to [-128, 127]:

- ``rounding="onnxruntime"``: round half to even, as ONNX QuantizeLinear;
- ``rounding="dpu"``: DPU_ROUND, half up (ties toward +inf), as vai_q's fix_neuron method 2
  (``VAI/include/cpu/nndct_fix_kernels_cpu.h``, VAI = Xilinx/Vitis-AI src/vai_quantizer/vai_q_pytorch).

Each tensor carries a bound of its magnitude, and its integers are *stored* in the narrowest torch
dtype that holds them exactly: float32 below 2**24, float64 below 2**53, else int64. Integer arithmetic
on such tensors (sums, products, power-of-two scaling, floor) is exact, and a convolution or matrix
product is exact in float32 (float64) while every partial sum stays below 2**24 (2**53), which the
bound checks before it runs; beyond 2**53 it refuses. This keeps the reference fast without leaving
the integers. 4-D tensors are kept channels-last, where torch's convolutions run fastest.

The same bounds tell where ONNX Runtime's float32 fake-quant execution is *not* exact (partial sums at
or above 2**24 LSB, or an elementwise result float32 cannot hold): those tensors carry
``float32_exact=False`` and a note, instead of showing up as a silent mismatch.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from vidconv_deploy.errors import UserError
from vidconv_deploy.fixpoint import arithmetic as fixpoint
from vidconv_deploy.fixpoint import kernels as K

ROUNDINGS = {"onnxruntime": "half_even", "dpu": "half_up"}
#: Ops that may read a float graph input before it is quantized (exact on floats).
_RAW_OPS = frozenset({"QuantizeLinear", "Relu", "Clip", "MaxPool", "Concat", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
                      "Transpose", "Split", "Slice", "Identity", "Dropout"})
#: Inputs that carry tensors, per op; the others are static arguments (scales, zero points, shapes, axes).
_VALUE_INPUTS: dict[str, tuple[int, ...]] = {
    "QuantizeLinear": (0,), "DequantizeLinear": (0,), "LeakyRelu": (0,), "MaxPool": (0,), "ReduceSum": (0,),
    "Reshape": (0,), "Squeeze": (0,), "Unsqueeze": (0,), "Split": (0,), "Slice": (0,),
}


@dataclass
class IntTensor:
    """A quantized activation: int8 codes (NCHW) and fix position (value = values * 2**-fix_point)."""

    values: np.ndarray
    fix_point: int
    float32_exact: bool = True
    note: str = ""


@dataclass
class ReferenceRun:
    """The integer run: every QuantizeLinear result by name, and the graph outputs as floats."""

    tensors: dict[str, IntTensor]
    outputs: dict[str, np.ndarray]
    rounding: str
    quantize_outputs: dict[str, str] = field(default_factory=dict)  # tensors key -> QuantizeLinear output name


@dataclass
class Fx:
    """An exact dyadic tensor: value = v * 2**-e, with ``bound`` >= max |v| known without scanning ``v``.

    ``exact``: ONNX Runtime's float32 value of this tensor equals it (``note`` says why not).
    ``owned``: ``v`` is a fresh result no other tensor shares (not a view, a constant or a feed), so a
    QuantizeLinear that is its only reader may requantize it in place (:func:`_requantize`).
    ``cache`` holds derived tensors of a constant (a weight's float copy, its absolute row sums).
    """

    v: torch.Tensor
    e: int
    bound: float
    exact: bool = True
    note: str = ""
    owned: bool = False
    cache: dict = field(default_factory=dict)

    def with_v(self, v: torch.Tensor) -> Fx:
        return Fx(v, self.e, self.bound, self.exact, self.note)


@dataclass
class Codes:
    """int8 codes (a QuantizeLinear output, with its fix point, or an int8 initializer), before a DequantizeLinear."""

    v: torch.Tensor
    fix_point: int | None = None
    exact: bool = True
    note: str = ""

    def with_v(self, v: torch.Tensor) -> Codes:
        return Codes(v, self.fix_point, self.exact, self.note)


@dataclass
class Raw:
    """A float graph input before its QuantizeLinear. Only ops that are exact on floats (ReLU, clip, max
    pool, concat, shape-only ops: what vai_q may group with an input) may run on it first."""

    v: torch.Tensor

    def with_v(self, v: torch.Tensor) -> Raw:
        return Raw(v)


def dyadic(array: np.ndarray) -> Fx:
    """A float constant as an exact :class:`Fx` (every finite float is a dyadic rational)."""
    x = np.asarray(array, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise UserError("a constant in the graph is not finite; the integer reference needs finite constants")
    mant, expo = np.frexp(x)  # x = mant * 2**expo, |mant| in [0.5, 1): mant * 2**53 is an integer
    ints = (mant * 2.0**53).astype(np.int64)
    nonzero = ints != 0
    if not nonzero.any():
        return Fx(torch.zeros(x.shape, dtype=torch.int64), 0, 0.0)
    lowest_bit = np.abs(ints[nonzero]) & -np.abs(ints[nonzero])
    trailing_zeros = np.log2(lowest_bit.astype(np.float64)).astype(np.int64)  # exact for powers of two
    e = int(np.max(53 - expo[nonzero] - trailing_zeros))
    v = np.round(np.ldexp(x, e))
    if np.max(np.abs(v)) >= 2.0**62:
        raise UserError("a constant in the graph spans too many binary digits for the integer reference")
    return Fx(torch.as_tensor(v.astype(np.int64)), e, float(np.max(np.abs(v))))


def _fix_point(scale: np.ndarray, where: str) -> int:
    values = np.asarray(scale, dtype=np.float64).reshape(-1)
    if values.size != 1:
        raise UserError(f"{where}: per-channel scales are not DPU arithmetic; quantize per tensor")
    k = K.log2_exact(float(values[0]))
    if k is None:
        raise UserError(f"{where}: scale {values[0]!r} is not a power of two; the DPU needs scale = 2**-fix_point")
    return -k


def _dtype(bound: float) -> torch.dtype:
    """The narrowest dtype that holds every integer of magnitude <= ``bound`` exactly."""
    if bound < K.FLOAT32_EXACT:
        return torch.float32
    if bound < K.FLOAT64_EXACT:
        return torch.float64
    return torch.int64


def _cast(v: torch.Tensor, bound: float) -> torch.Tensor:
    return v.to(_dtype(bound))


def _times_pow2(v: torch.Tensor, k: int, bound: float) -> torch.Tensor:
    """v * 2**k (k >= 0) exactly, stored as the result's ``bound`` needs."""
    v = _cast(v, bound)
    if k == 0:
        return v
    return v * 2.0**k if v.is_floating_point() else v << k


def _align(xs: list[Fx]) -> tuple[list[torch.Tensor], int, float]:
    """The values scaled to the finest exponent in one dtype, that exponent, and the bound of their sum."""
    e = max(x.e for x in xs)
    total = sum(x.bound * 2.0 ** (e - x.e) for x in xs)
    return [_times_pow2(x.v, e - x.e, total) for x in xs], e, total


def _label(proto: onnx.NodeProto) -> str:
    """A node's name for messages (its first output when unnamed)."""
    return proto.name or f"producing {proto.output[0]!r}"


def _merge(xs: list[Fx | Codes]) -> tuple[bool, str]:
    notes = [x.note for x in xs if x.note]
    return all(x.exact for x in xs), notes[0] if notes else ""


def _inexact(op: str, name: str, magnitude: float) -> str:
    return f"fake-quant float32 not exact here: {op} {name} forms values up to 2**{math.log2(max(magnitude, 1)):.1f} LSB (>= 2**24)"


def _requantize(x: Fx, fix_point: int, mode: str, lowest: float, in_place: bool) -> torch.Tensor:
    """int8 codes (stored as float32) of ``x`` at ``fix_point``: shift by e - fix_point, round, saturate to
    [``lowest``, 127] (``lowest`` 0 is a ReLU folded in: rounding is monotone and keeps 0).

    In float storage the shift is a power-of-two scaling (exact in floating point) and the rounding uses
    floor and x - floor(x), also exact; int64 accumulators take :func:`fixpoint.shift_round`. ``in_place``:
    ``x.v`` is dead after this (an owned accumulator read once), so the first pass writes into it instead
    of a new tensor.
    """
    shift = x.e - fix_point
    if x.v.is_floating_point():
        exact = K.FLOAT32_EXACT if x.v.dtype == torch.float32 else K.FLOAT64_EXACT
        if mode == "half_up" and shift > 0 and x.bound + 2.0 ** (shift - 1) < exact:
            # the DPU's own (acc + 2**(shift-1)) >> shift: the sum stays exact below 2**24 (2**53), then an
            # exact power-of-two scaling and floor; three passes instead of rounding and fixing the ties
            half = 2.0 ** (shift - 1)
            f = (x.v.add_(half) if in_place else x.v + half).mul_(2.0**-shift).floor_()
        else:
            f = (x.v.mul_(2.0**-shift) if in_place else x.v * 2.0**-shift) if shift else x.v
            f = torch.round(f) if mode == "half_even" else fixpoint.round_float(f, mode)
        return f.clamp_(lowest, fixpoint.QMAX).to(torch.float32)
    return fixpoint.shift_round(x.v, shift, mode).clamp_(lowest, fixpoint.QMAX).to(torch.float32)


class Executor:
    """Runs one QDQ model on integer tensors; build once (constants are folded then), call :meth:`run` per feed."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        graph = model.graph
        self.inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.inputs = [vi.name for vi in graph.input if vi.name not in self.inits]
        self.outputs = [o.name for o in graph.output]
        self._ops: dict[str, Callable[[onnx.NodeProto, list], list]] = {
            "QuantizeLinear": self._quantize, "DequantizeLinear": self._dequantize,
            "Conv": self._conv, "Gemm": self._gemm, "MatMul": self._matmul,
            "Add": self._add, "Mul": self._mul, "Concat": self._concat,
            "Relu": self._relu, "Clip": self._clip, "LeakyRelu": self._leaky,
            "MaxPool": self._maxpool, "ReduceSum": self._reduce_sum,
            "AveragePool": self._avgpool, "GlobalAveragePool": self._global_avgpool, "ReduceMean": self._reduce_mean,
            **{op: self._shape for op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Split", "Slice", "Identity", "Dropout")},
        }
        for n in graph.node:
            if n.op_type not in self._ops:
                raise UserError(
                    f"node {n.name or n.output[0]} has op type {n.op_type}, which the integer reference does not support; "
                    f"supported: {sorted(self._ops)}"
                )
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for t in n.input:
                consumers.setdefault(t, []).append(n)
        # a QuantizeLinear result is named after its DequantizeLinear output (the float graph's name)
        self.key_of_q: dict[str, str] = {}
        for n in graph.node:
            if n.op_type == "QuantizeLinear":
                dqs = [c for c in consumers.get(n.output[0], []) if c.op_type == "DequantizeLinear"]
                self.key_of_q[n.output[0]] = dqs[0].output[0] if len(dqs) == 1 else n.output[0]
        self._attrs = {id(n): K.attributes(n) for n in graph.node}
        self._fix_points = {id(n): self._q_fix_point(n) for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
        # fold what depends on constants only (weight DequantizeLinears), once
        self.constants: dict[str, Fx | Codes] = {}
        self.nodes: list[onnx.NodeProto] = []
        self._local = threading.local()  # the rounding of the run in progress, per thread (runs may overlap)
        self._local.workers = 1  # folding the constants below: one thread
        for n in graph.node:
            names = [t for i, t in enumerate(n.input) if t and self._is_value_input(n, i)]
            if n.op_type != "QuantizeLinear" and all(t in self.inits or t in self.constants for t in names):
                outs = self._ops[n.op_type](n, self._args(n, self.constants))
                for out in outs:  # kept for every run: no run may overwrite it
                    if isinstance(out, Fx):
                        out.owned = False
                self.constants.update(zip(n.output, outs, strict=False))
            else:
                self.nodes.append(n)
        self._lowest_code: dict[int, float] = {}  # QuantizeLinear -> lowest code, 0 where a ReLU is folded in
        self.nodes = self._fold_relus(self.nodes)
        reads = Counter(t for n in self.nodes for t in n.input if t)
        #: tensors exactly one node reads once (not graph outputs): that read may overwrite an owned value
        self._read_once = {t for t, count in reads.items() if count == 1} - set(self.outputs)
        # tensor -> index of the last node reading it: a run drops it there (graph outputs are kept)
        self.last_use = {t: i for i, n in enumerate(self.nodes) for t in n.input if t and t not in self.outputs}

    def _fold_relus(self, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
        """``nodes`` with each Relu that only a QuantizeLinear reads folded into it: the QuantizeLinear reads
        the Relu's input and saturates at code 0 (the same codes: rounding is monotone and keeps 0), so the
        activation costs one pass instead of two (the Relu's tensor is not recorded; only codes are)."""
        readers: dict[str, list[onnx.NodeProto]] = {}
        for n in nodes:
            for t in n.input:
                readers.setdefault(t, []).append(n)
        folded: dict[int, onnx.NodeProto] = {}  # id of a QuantizeLinear -> the one that replaces it
        skipped: set[int] = set()
        for n in nodes:
            after = readers.get(n.output[0], []) if n.op_type == "Relu" else []
            if len(after) == 1 and after[0].op_type == "QuantizeLinear" and after[0].input[0] == n.output[0] \
                    and n.output[0] not in self.outputs:
                q = onnx.NodeProto()
                q.CopyFrom(after[0])
                q.input[0] = n.input[0]
                self._attrs[id(q)], self._fix_points[id(q)] = self._attrs[id(after[0])], self._fix_points[id(after[0])]
                self._lowest_code[id(q)] = 0.0
                folded[id(after[0])] = q
                skipped.add(id(n))
        return [folded.get(id(n), n) for n in nodes if id(n) not in skipped]

    # ---- values ------------------------------------------------------------------------------------

    @staticmethod
    def _is_value_input(proto: onnx.NodeProto, index: int) -> bool:
        keep = _VALUE_INPUTS.get(proto.op_type)
        return keep is None or index in keep

    def _const(self, name: str) -> Fx | Codes:
        if name not in self.constants:
            arr = self.inits[name]
            if arr.dtype == np.int8:
                self.constants[name] = Codes(torch.as_tensor(arr.astype(np.float32)))
            elif arr.dtype.kind == "f":
                self.constants[name] = dyadic(arr)
            else:
                raise UserError(f"initializer {name} ({arr.dtype}) is used as a tensor; only int8 codes and float constants are")
        return self.constants[name]

    def _static(self, proto: onnx.NodeProto, index: int) -> np.ndarray | None:
        return K.constant_input(proto, index, self.inits, _label(proto))

    def _q_fix_point(self, proto: onnx.NodeProto) -> int:
        zp = self._static(proto, 2)
        if zp is None or zp.dtype != np.int8 or np.any(zp != 0):
            raise UserError(f"node {_label(proto)}: the DPU needs an int8 zero point 0 (symmetric quantization)")
        return _fix_point(self._static(proto, 1), f"node {_label(proto)}")

    def _args(self, proto: onnx.NodeProto, values: Mapping[str, object]) -> list:
        args = []
        for i, name in enumerate(proto.input):
            if not name or not self._is_value_input(proto, i):
                args.append(None)
            elif name in values:
                args.append(values[name])
            elif name in self.inits or name in self.constants:
                args.append(self._const(name))
            else:
                raise UserError(f"node {_label(proto)} reads {name!r}, which nothing provides; the graph is broken")
        if any(isinstance(a, Raw) for a in args) and proto.op_type not in _RAW_OPS:
            raise UserError(f"node {_label(proto)} ({proto.op_type}) computes on a float graph input; quantize graph inputs first")
        return args

    @property
    def mode(self) -> str:
        """The rounding mode of this thread's run (:data:`ROUNDINGS`)."""
        return self._local.mode

    def run(self, feeds: Mapping[str, np.ndarray], rounding: str = "onnxruntime") -> ReferenceRun:
        """One feed through the graph; several threads may run the same executor at once."""
        if rounding not in ROUNDINGS:
            raise UserError(f"unknown rounding {rounding!r}; use one of {sorted(ROUNDINGS)}")
        self._local.mode = ROUNDINGS[rounding]
        # The caller's torch threads (1 on a core-pool worker, every core for one feed alone): small ops run
        # single-threaded below, large ones on this many threads (K.op_threads, K.conv_int).
        self._local.workers = workers = torch.get_num_threads()
        values: dict[str, object] = {}
        for name in self.inputs:
            if name not in feeds:
                raise UserError(f"feed lacks graph input {name!r}")
            values[name] = Raw(torch.as_tensor(np.asarray(feeds[name], dtype=np.float32)))
        run = ReferenceRun({}, {}, rounding)
        with torch.no_grad(), K.single_threaded():
            for index, proto in enumerate(self.nodes):
                args = self._args(proto, values)
                with K.torch_threads(K.op_threads(args[0].v.numel() if args and args[0] is not None else 0, workers)):
                    outs = self._ops[proto.op_type](proto, args)
                values.update(zip(proto.output, outs, strict=False))
                for name in set(proto.input):
                    if self.last_use.get(name) == index:
                        values.pop(name, None)
                if proto.op_type == "QuantizeLinear":
                    codes = outs[0]
                    key = self.key_of_q[proto.output[0]]
                    # NCHW-indexed view of the channels-last codes (no copy; consumers index or transpose it)
                    values_nchw = codes.v.to(torch.int8).numpy()
                    run.tensors[key] = IntTensor(values_nchw, codes.fix_point, codes.exact, codes.note)
                    run.quantize_outputs[key] = proto.output[0]
        for name in self.outputs:
            value = values[name] if name in values else self.constants[name]
            if isinstance(value, Fx):
                run.outputs[name] = (value.v.to(torch.float64) * 2.0**-value.e).to(torch.float32).numpy()
            elif isinstance(value, Codes):
                run.outputs[name] = value.v.to(torch.int8).numpy()
            else:
                run.outputs[name] = value.v.numpy()
        return run

    # ---- quantization ------------------------------------------------------------------------------

    def _quantize(self, proto: onnx.NodeProto, args: list) -> list:
        fp, lowest = self._fix_points[id(proto)], self.lowest_code(proto)
        x = args[0]
        if isinstance(x, Raw):
            scaled = x.v.to(torch.float64) * 2.0**fp  # exact: float32 input scaled by a power of two
            if scaled.dim() == 4:
                scaled = scaled.contiguous(memory_format=torch.channels_last)
            return [Codes(fixpoint.round_float(scaled, self.mode).clamp_(lowest, fixpoint.QMAX).to(torch.float32), fp)]
        if not isinstance(x, Fx):
            raise UserError(f"node {_label(proto)}: QuantizeLinear of int8 codes; dequantize them first")
        in_place = x.owned and proto.input[0] in self._read_once
        return [Codes(_requantize(x, fp, self.mode, lowest, in_place), fp, x.exact, x.note)]

    def lowest_code(self, proto: onnx.NodeProto) -> float:
        """The code a QuantizeLinear of :attr:`nodes` saturates at from below: 0 where a ReLU is folded into it
        (it then reads the ReLU's input), else -128."""
        return self._lowest_code.get(id(proto), fixpoint.QMIN)

    def _dequantize(self, proto: onnx.NodeProto, args: list) -> list:
        codes = args[0]
        if not isinstance(codes, Codes):
            raise UserError(f"node {_label(proto)}: DequantizeLinear must read int8 codes")
        return [Fx(codes.v, self._fix_points[id(proto)], float(-fixpoint.QMIN), codes.exact, codes.note)]

    # ---- arithmetic --------------------------------------------------------------------------------

    def _fx(self, proto: onnx.NodeProto, args: list) -> list[Fx]:
        out = [a for a in args if a is not None]
        if any(isinstance(a, Raw) for a in out):
            raise UserError(f"node {_label(proto)} ({proto.op_type}) computes on a float graph input; quantize graph inputs first")
        if any(not isinstance(a, Fx) for a in out):
            raise UserError(f"node {_label(proto)} ({proto.op_type}) reads int8 codes without a DequantizeLinear")
        return out

    @staticmethod
    def _weight(w: Fx, dtype: torch.dtype, transpose: bool = False, shift: int = 0) -> torch.Tensor:
        """A constant weight times ``2**shift`` in ``dtype`` (cached on the constant)."""
        key = (dtype, transpose, shift)
        if key not in w.cache:
            v = w.v.t() if transpose else w.v
            fmt = torch.channels_last if v.dim() == 4 else torch.contiguous_format
            w.cache[key] = (v.to(dtype) * 2.0**shift).contiguous(memory_format=fmt)
        return w.cache[key]

    @staticmethod
    def _row_sum(w: Fx, dims: tuple[int, ...]) -> float:
        """max over outputs of sum |w| (cached): times max |x| it bounds every partial sum."""
        key = ("rowsum", dims)
        if key not in w.cache:
            w.cache[key] = float(w.v.to(torch.float64).abs().sum(dim=dims).max()) if w.v.numel() else 0.0
        return w.cache[key]

    def _accumulate(self, proto: onnx.NodeProto, x: Fx, w: Fx, bias: Fx | None, row_sum: float, compute, tight,
                    channel_shape: list[int]) -> Fx:
        """``compute(dtype, shift, bias)``: the exact products times ``2**shift`` summed in ``dtype``, the aligned
        bias added by the same library call (a conv's or matmul's own bias: one pass over the accumulator
        instead of two; exact, as every partial sum, bias or not, stays within the bound that picked
        ``dtype``); then the float32 verdict."""
        static = x.bound * row_sum
        if static >= K.FLOAT64_EXACT:  # x.bound may be loose: measure before refusing
            static = float(x.v.abs().max()) * row_sum
        e_acc = x.e + w.e
        exact, note = _merge([x, w] + ([bias] if bias is not None else []))
        e = e_acc if bias is None else max(e_acc, bias.e)
        bias_bound = 0.0 if bias is None else bias.bound * 2.0 ** (e - bias.e)
        bound = static * 2.0 ** (e - e_acc) + bias_bound
        dtype = K.exact_dtype(bound, f"node {_label(proto)}")
        aligned = None
        if bias is not None:
            key = ("aligned", e, dtype)
            if key not in bias.cache:
                bias.cache[key] = _times_pow2(bias.v, e - bias.e, bound).reshape(-1)
            aligned = bias.cache[key]
        acc = compute(dtype, e - e_acc, aligned)
        if exact and bound >= K.FLOAT32_EXACT:
            worst = tight() * 2.0 ** (e - e_acc)
            if aligned is not None:
                worst = worst + aligned.abs().to(torch.float64).reshape(channel_shape)
            worst_max = float(worst.max()) if worst.numel() else 0.0
            if worst_max >= K.FLOAT32_EXACT:
                exact, note = False, _inexact(proto.op_type, _label(proto), worst_max)
        return Fx(acc, e, bound, exact, note, owned=True)

    def _conv(self, proto: onnx.NodeProto, args: list) -> list:
        x, w, *rest = self._fx(proto, args)
        attrs = self._attrs[id(proto)]
        if "window" not in w.cache:
            w.cache["window"] = K.window(proto, (w.v.shape[2], w.v.shape[3]))
        win, group = w.cache["window"], int(attrs.get("group", 1))

        def compute(dtype: torch.dtype, shift: int, bias: torch.Tensor | None) -> torch.Tensor:
            return K.conv_int(x.v, self._weight(w, dtype, shift=shift), win, group, dtype, self._local.workers, bias)

        def tight() -> torch.Tensor:
            return K.conv_partial_sum_bound(x.v, w.v, win, group)

        row_sum = self._row_sum(w, (1, 2, 3))
        return [self._accumulate(proto, x, w, rest[0] if rest else None, row_sum, compute, tight, [1, -1, 1, 1])]

    def _gemm(self, proto: onnx.NodeProto, args: list) -> list:
        a = self._attrs[id(proto)]
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            raise UserError(f"node {_label(proto)}: Gemm with transA or alpha/beta != 1 is not supported")
        x, w, *rest = self._fx(proto, args)
        return [self._dense(proto, x, w, bool(a.get("transB", 0)), rest[0] if rest else None)]

    def _matmul(self, proto: onnx.NodeProto, args: list) -> list:
        x, w = self._fx(proto, args)
        return [self._dense(proto, x, w, False, None)]

    def _dense(self, proto: onnx.NodeProto, x: Fx, w: Fx, transpose: bool, bias: Fx | None) -> Fx:
        def compute(dtype: torch.dtype, shift: int, bias: torch.Tensor | None) -> torch.Tensor:
            product = torch.matmul(x.v.to(dtype), self._weight(w, dtype, transpose, shift))
            return product if bias is None else product.add_(bias)

        def tight() -> torch.Tensor:
            return K.matmul_partial_sum_bound(x.v, self._weight(w, torch.float64, transpose))

        row_sum = self._row_sum(w, (1,) if transpose else (0,))
        return self._accumulate(proto, x, w, bias, row_sum, compute, tight, [-1])

    def _elementwise(self, proto: onnx.NodeProto, inputs: list[Fx], v: torch.Tensor, e: int, bound: float) -> Fx:
        """A single float32 op on exact inputs is exact iff float32 holds the exact result."""
        exact, note = _merge(inputs)
        if exact and bound >= K.FLOAT32_EXACT and not bool((v.to(torch.float32).to(v.dtype) == v).all()):
            exact, note = False, _inexact(proto.op_type, _label(proto), float(v.abs().max()))
        return Fx(v, e, bound, exact, note, owned=True)

    def _add(self, proto: onnx.NodeProto, args: list) -> list:
        xs = self._fx(proto, args)
        (a, b), e, bound = _align(xs)
        return [self._elementwise(proto, xs, a + b, e, bound)]

    def _mul(self, proto: onnx.NodeProto, args: list) -> list:
        a, b = self._fx(proto, args)
        bound = a.bound * b.bound
        return [self._elementwise(proto, [a, b], _cast(a.v, bound) * _cast(b.v, bound), a.e + b.e, bound)]

    def _concat(self, proto: onnx.NodeProto, args: list) -> list:
        axis = int(self._attrs[id(proto)]["axis"])
        if all(isinstance(a, Raw) for a in args):
            return [Raw(torch.cat([a.v for a in args], dim=axis))]
        xs = self._fx(proto, args)
        e = max(x.e for x in xs)
        bound = max(x.bound * 2.0 ** (e - x.e) for x in xs)
        exact, note = _merge(xs)
        vs = [_times_pow2(x.v, e - x.e, bound) for x in xs]
        return [Fx(torch.cat(vs, dim=axis), e, bound, exact, note, owned=True)]

    def _relu(self, proto: onnx.NodeProto, args: list) -> list:
        x = args[0]
        if not isinstance(x, Raw):
            (x,) = self._fx(proto, args)
        return [x.with_v(x.v.clamp(min=0))]

    def _clip(self, proto: onnx.NodeProto, args: list) -> list:
        x, *limits = args
        if isinstance(x, Raw):
            lo, hi = (None if b is None else float(b.v.to(torch.float64) * 2.0**-b.e) for b in (limits + [None, None])[:2])
            return [Raw(x.v.clamp(lo, hi))]
        (x,) = self._fx(proto, [x])
        lo, hi = (b if isinstance(b, Fx) else None for b in (limits + [None, None])[:2])
        parts = [x] + [b for b in (lo, hi) if b is not None]
        e = max(p.e for p in parts)
        bound = max(p.bound * 2.0 ** (e - p.e) for p in parts)
        v, *rest = [_times_pow2(p.v, e - p.e, bound) for p in parts]
        if lo is not None:
            v = torch.maximum(v, rest.pop(0))
        if hi is not None:
            v = torch.minimum(v, rest.pop(0))
        return [Fx(v, e, bound, x.exact, x.note)]

    def _leaky(self, proto: onnx.NodeProto, args: list) -> list:
        (x,) = self._fx(proto, args)
        alpha = dyadic(np.float32(self._attrs[id(proto)].get("alpha", 0.01)))
        a = int(alpha.v)
        bound = x.bound * max(abs(a), 2**alpha.e)
        v = _cast(x.v, bound)
        v = torch.where(v < 0, v * a, v * 2**alpha.e)
        return [self._elementwise(proto, [x], v, x.e + alpha.e, bound)]

    def _maxpool(self, proto: onnx.NodeProto, args: list) -> list:
        x = args[0]
        if not isinstance(x, Raw):
            (x,) = self._fx(proto, args)
        if len(proto.output) > 1 and proto.output[1]:
            raise UserError(f"node {_label(proto)}: MaxPool indices output is not supported")
        kernel = self._attrs[id(proto)]["kernel_shape"]
        return [x.with_v(K.maxpool_int(x.v, K.window(proto, (kernel[0], kernel[1]))))]

    def _sum(self, proto: onnx.NodeProto, x: Fx, summed, count: int, exact_sums) -> Fx:
        """A sum of ``count`` values per output, ``summed(dtype)``; float32 partial sums are exact below 2**24."""
        exact, note, bound = x.exact, x.note, x.bound * count
        v = summed(_cast(x.v, bound))
        if exact and bound >= K.FLOAT32_EXACT:
            worst = exact_sums()
            if worst >= K.FLOAT32_EXACT:
                exact, note = False, _inexact(proto.op_type, _label(proto), worst)
        return Fx(v, x.e, bound, exact, note)

    def _axis_sum(self, proto: onnx.NodeProto, x: Fx, dims: list[int], keep: bool) -> Fx:
        count = int(np.prod([x.v.shape[d] for d in dims]))
        return self._sum(proto, x, lambda v: v.sum(dim=dims, keepdim=keep), count,
                         lambda: float(x.v.to(torch.float64).abs().sum(dim=dims).max()) if x.v.numel() else 0.0)

    def _reduce_sum(self, proto: onnx.NodeProto, args: list) -> list:
        (x,) = self._fx(proto, args[:1])
        axes = self._static(proto, 1)
        dims = list(range(x.v.dim())) if axes is None else [int(a) % x.v.dim() for a in axes]
        return [self._axis_sum(proto, x, dims, bool(self._attrs[id(proto)].get("keepdims", 1)))]

    def _average(self, proto: onnx.NodeProto, total: Fx, count: int) -> list:
        if not K.is_power_of_two(count):
            raise UserError(
                f"node {_label(proto)}: {proto.op_type} over {count} values divides by a non-power of two; quantize with "
                "vidconv_deploy.quant.quantize_onnx, which writes the DPU's sum * multiplier / 2**shift"
            )
        total.e += count.bit_length() - 1
        return [total]

    def _avgpool(self, proto: onnx.NodeProto, args: list) -> list:
        (x,) = self._fx(proto, args)
        a = self._attrs[id(proto)]
        win = K.window(proto, tuple(a["kernel_shape"]))
        if any(win.pads) and not a.get("count_include_pad", 0):
            raise UserError(f"node {_label(proto)}: AveragePool with count_include_pad=0 and padding is not DPU arithmetic")
        channels, count = x.v.shape[1], win.kernel[0] * win.kernel[1]

        def window_sum(v: torch.Tensor) -> torch.Tensor:
            dtype = v.dtype if v.is_floating_point() else torch.float64
            ones = torch.ones((channels, 1, *win.kernel), dtype=dtype)
            return K.conv_int(v, ones, win, channels, dtype)

        def exact_sums() -> float:
            return float(window_sum(x.v.to(torch.float64).abs()).max()) if x.v.numel() else 0.0

        return self._average(proto, self._sum(proto, x, window_sum, count, exact_sums), count)

    def _global_avgpool(self, proto: onnx.NodeProto, args: list) -> list:
        (x,) = self._fx(proto, args)
        return self._average(proto, self._axis_sum(proto, x, [2, 3], True), x.v.shape[2] * x.v.shape[3])

    def _reduce_mean(self, proto: onnx.NodeProto, args: list) -> list:
        (x,) = self._fx(proto, args)
        a = self._attrs[id(proto)]
        dims = [int(d) % x.v.dim() for d in a.get("axes", range(x.v.dim()))]
        total = self._axis_sum(proto, x, dims, bool(a.get("keepdims", 1)))
        return self._average(proto, total, int(np.prod([x.v.shape[d] for d in dims])))

    # ---- shape-only ops ----------------------------------------------------------------------------

    def _shape(self, proto: onnx.NodeProto, args: list) -> list:
        x = args[0]
        a, op, v = self._attrs[id(proto)], proto.op_type, x.v
        if op in ("Identity", "Dropout"):
            return [x.with_v(v)]  # a second name for the tensor: neither name owns it
        if op == "Flatten":
            return [x.with_v(K.flatten(v, int(a.get("axis", 1))))]
        if op == "Reshape":
            return [x.with_v(K.reshape(v, self._static(proto, 1), int(a.get("allowzero", 0))))]
        if op == "Squeeze":
            return [x.with_v(K.squeeze(v, self._static(proto, 1)))]
        if op == "Unsqueeze":
            return [x.with_v(K.unsqueeze(v, self._static(proto, 1)))]
        if op == "Transpose":
            perm = a.get("perm")
            return [x.with_v(v.permute(*perm) if perm is not None else v.permute(*reversed(range(v.dim()))))]
        if op == "Split":
            parts = K.split(v, int(a.get("axis", 0)), self._static(proto, 1), len(proto.output))
            return [x.with_v(p) for p in parts]
        return [x.with_v(K.slice_(v, *(self._static(proto, i) for i in (1, 2, 3, 4))))]


def run_reference(qdq_model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *, rounding: str = "onnxruntime") -> ReferenceRun:
    """Execute ``qdq_model`` on integers; ``rounding`` is "onnxruntime" (half to even) or "dpu" (half up)."""
    return Executor(qdq_model).run(feeds, rounding)
