"""Xilinx DPU rules: place every op on the DPU, the board CPU, or nowhere, and say why.

This mirrors what the Vitis AI quantizer's inspector (``dpu_op_filter.py``) and compiler decide,
with the engine limits taken from the target's rule-set YAML (itself taken from the target_factory
prototxt and UG1414). An op that breaks a DPU limit falls to the board CPU when a CPU kernel exists
(``board_cpu_ops``), otherwise it is unsupported; either way it is an ``error`` finding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import onnx

from vidconv_deploy.check.graph import ModelGraph
from vidconv_deploy.check.ops import Op, compute_predecessors, producers
from vidconv_deploy.check.result import Finding
from vidconv_deploy.check.ruleset import RuleSet

DPU, CPU, UNSUPPORTED = "DPU", "CPU", "unsupported"
LEAKY_ALPHA = 26 / 256
_ACTIVATIONS = {"Relu", "LeakyRelu", "Clip", "HardSigmoid", "HardSwish", "PRelu"}
_POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}
_RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze"}
_SINGLE_COMPOSITES = {"LayerNormalization": "LayerNorm", "Gelu": "GELU"}


@dataclass
class Placement:
    """Where an op runs and, on the DPU, which engine (conv, alu, eltwise) does the work."""

    device: str
    engine: str | None = None


def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _decode(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _pads(node: onnx.NodeProto, in_hw: tuple[int, ...] | None, k: tuple[int, int], s: tuple[int, int], d: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), resolving ``auto_pad`` from the input size."""
    auto = _decode(attr(node, "auto_pad", "NOTSET"))
    if auto in ("SAME_UPPER", "SAME_LOWER") and in_hw:
        out = []
        for size, kk, ss, dd in zip(in_hw, k, s, d):
            total = max((math.ceil(size / ss) - 1) * ss + (kk - 1) * dd + 1 - size, 0)
            small, big = total // 2, total - total // 2
            out.append((small, big) if auto == "SAME_UPPER" else (big, small))
        return out[0][0], out[1][0], out[0][1], out[1][1]
    pads = list(attr(node, "pads", [0, 0, 0, 0]))
    if len(pads) == 2:  # 1-D op seen as height 1
        return 0, pads[0], 0, pads[1]
    return pads[0], pads[1], pads[2], pads[3]


def _hw(values: list[int] | None, default: int) -> tuple[int, int]:
    if not values:
        return default, default
    return (1, values[0]) if len(values) == 1 else (values[0], values[1])


class DpuChecker:
    """Walk the ops in topological order, placing each and collecting findings."""

    def __init__(self, graph: ModelGraph, ops: list[Op], rules: RuleSet) -> None:
        self.graph, self.ops, self.rules = graph, ops, rules
        self.data = rules.data
        self.cp = int(self.data["channel_parallel"])
        self.engines = self.data["engines"]
        self.cpu_ops: dict[str, str] = self.data["board_cpu_ops"]["ops"]
        self.by_tensor = producers(ops)
        self.placement: dict[str, Placement] = {}
        self.findings: list[Finding] = []

    # -- bookkeeping --------------------------------------------------------------------------
    def report(self, op: Op, rule_id: str, message: str, **fmt: Any) -> None:
        rule = self.rules.rule(rule_id)
        ctx = {"op_type": op.op_type, "arch_source": self.data.get("arch", {}).get("source", ""), **fmt}
        self.findings.append(Finding(op.name, op.op_type, rule_id, message, rule["fix"].format(**ctx), rule["source"].format(**ctx), rule["severity"]))

    def fallback(self, op: Op) -> Placement:
        return Placement(CPU if op.op_type in self.cpu_ops else UNSUPPORTED)

    def preds(self, op: Op) -> list[Op]:
        return compute_predecessors(op, self.by_tensor)

    def fused_into(self, op: Op) -> Placement | None:
        """The DPU placement of the single producer whose only consumer is ``op``, if any."""
        preds = self.preds(op)
        if len(preds) != 1 or len(op.inputs) != 1:
            return None
        prev = self.placement.get(preds[0].name)
        if prev is None or prev.device != DPU or len(self.graph.consumers.get(op.inputs[0], [])) != 1:
            return None
        return prev

    # -- entry point --------------------------------------------------------------------------
    def run(self) -> tuple[dict[str, Placement], list[Finding]]:
        for op in self.ops:
            if not op.elided:
                self.placement[op.name] = self.place(op)
        return self.placement, self.findings

    def place(self, op: Op) -> Placement:
        kind = _SINGLE_COMPOSITES.get(op.op_type, op.op_type)
        if kind in self.data["composites"]:
            info = self.data["composites"][kind]
            self.findings.append(Finding(op.name, op.op_type, "dpu.unsupported-op",
                                         f"{kind} has no DPU engine and no board CPU kernel", info["fix"], info["source"]))
            return Placement(UNSUPPORTED)
        handler = getattr(self, f"place_{op.op_type}", None)
        if op.op_type in _ACTIVATIONS:
            handler = self.place_activation
        elif op.op_type in _POOLS:
            handler = self.place_pool
        elif op.op_type in _RESHAPES:
            handler = self.place_reshape
        if handler is not None:
            return handler(op)
        if op.op_type in self.cpu_ops:  # no DPU engine, but a board CPU kernel
            return self.cpu_op(op)
        self.report(op, "dpu.unsupported-op", f"{op.op_type} has no DPU engine and no board CPU kernel")
        return Placement(UNSUPPORTED)

    def cpu_op(self, op: Op) -> Placement:
        kernel = self.cpu_ops[op.op_type]
        self.report(op, "dpu.cpu-op", f"{op.op_type} is not a DPU op; it runs on the board CPU ({kernel})", kernel=kernel)
        return Placement(CPU)

    # -- convolution-like ---------------------------------------------------------------------
    def place_Conv(self, op: Op) -> Placement:
        node, g = op.node, self.graph
        wshape = g.static_shape(node.input[1])
        if not g.is_const(node.input[1]) or wshape is None:
            self.report(op, "dpu.const-weight", "the conv weight is not a constant")
            return self.fallback(op)
        if len(wshape) != 4:
            return self.conv_rank(op, wshape)
        xshape = g.static_shape(node.input[0])
        group = int(attr(node, "group", 1))
        cin, cout = (xshape[1] if xshape else wshape[1] * group), wshape[0]
        k = _hw(list(wshape[2:]), 1)
        s = _hw(attr(node, "strides"), 1)
        d = _hw(attr(node, "dilations"), 1)
        in_hw = tuple(xshape[2:]) if xshape and len(xshape) == 4 else None
        pads = _pads(node, in_hw, k, s, d)
        global_window = in_hw is not None and tuple(in_hw) == k
        if group == 1:
            ok = self.conv_limits(op, k, s, pads, d, cin, cout, global_window)
            return Placement(DPU, "conv") if ok else self.fallback(op)
        if group == cin == cout:
            ok = self.dwconv_limits(op, k, s, pads, d, cin, global_window)
            return Placement(DPU, "alu") if ok else self.fallback(op)
        self.report(op, "dpu.conv.group", f"grouped conv (group={group}, {cin}->{cout} channels) is neither a conv nor a depthwise conv", group=group)
        return self.fallback(op)

    def _range(self, op: Op, rule_id: str, what: str, values: tuple[int, ...], limit: list[int]) -> bool:
        lo, hi = limit
        if all(lo <= v <= hi for v in values):
            return True
        self.report(op, rule_id, f"{what} {'x'.join(map(str, values))} outside {lo}..{hi}", lo=lo, hi=hi)
        return False

    def conv_limits(self, op: Op, k: tuple[int, int], s: tuple[int, int], pads: tuple[int, ...], d: tuple[int, int], cin: int, cout: int, global_window: bool = False) -> bool:
        eng = self.engines["conv"]
        ok = self._range(op, "dpu.conv.kernel", "kernel", k, eng["kernel"])
        if not global_window:
            ok &= self._range(op, "dpu.conv.stride", "stride", s, eng["stride"])
        top, left, bottom, right = pads
        max_h, max_w = (k[0] - 1) * d[0], (k[1] - 1) * d[1]
        if not (0 <= top <= max_h and 0 <= bottom <= max_h and 0 <= left <= max_w and 0 <= right <= max_w):
            self.report(op, "dpu.conv.pad", f"pads (top, left, bottom, right) {list(pads)} exceed (kernel - 1) * dilation = ({max_h}, {max_w})")
            ok = False
        limit = 256 * self.cp
        dil = max(d)
        if dil > 1 and dil * cin > limit:
            self.report(op, "dpu.conv.dilation-channels", f"dilation {dil} x {cin} input channels = {dil * cin} > 256 * {self.cp} = {limit}", max_channels=limit // dil)
            ok = False
        bank = eng["weight_bank"]
        per_group = k[0] * k[1] * math.ceil(eng["output_channel_parallel"] / bank["num"])
        depth = per_group * math.ceil(cin / bank["width"])
        if depth > bank["depth"]:
            self.report(op, "dpu.conv.bank-depth",
                        f"weights need bank depth {k[0]}*{k[1]}*ceil({cin}/{bank['width']})*ceil({eng['output_channel_parallel']}/{bank['num']}) = {depth} > {bank['depth']}",
                        max_ic=bank["depth"] // per_group * bank["width"])
            ok = False
        if cin > limit:
            self.report(op, "dpu.conv.in-channels", f"{cin} input channels > 256 * {self.cp} = {limit}", limit=limit)
            ok = False
        if cout > limit:
            self.report(op, "dpu.conv.out-channels", f"{cout} output channels > 256 * {self.cp} = {limit}", limit=limit)
            ok = False
        return ok

    def _alu_pads(self, op: Op, rule_id: str, pads: tuple[int, ...]) -> bool:
        alu = self.engines["alu"]
        (lt_lo, lt_hi), (rb_lo, rb_hi) = alu["pad_left_top"], alu["pad_right_bottom"]
        top, left, bottom, right = pads
        if lt_lo <= top <= lt_hi and lt_lo <= left <= lt_hi and rb_lo <= bottom <= rb_hi and rb_lo <= right <= rb_hi:
            return True
        self.report(op, rule_id, f"pads (top, left, bottom, right) {list(pads)} outside left/top {lt_lo}..{lt_hi}, right/bottom {rb_lo}..{rb_hi}",
                    left_hi=lt_hi, right_hi=rb_hi)
        return False

    def dwconv_limits(self, op: Op, k: tuple[int, int], s: tuple[int, int], pads: tuple[int, ...], d: tuple[int, int], channels: int, global_window: bool = False) -> bool:
        alu = self.engines["alu"]
        ok = self._range(op, "dpu.dwconv.kernel", "depthwise kernel", k, alu["kernel"])
        if not global_window:
            ok &= self._range(op, "dpu.dwconv.stride", "depthwise stride", s, alu["stride"])
        ok &= self._alu_pads(op, "dpu.dwconv.pad", pads)
        if d[0] != d[1] and k[0] > 1 and k[1] > 1:
            self.report(op, "dpu.dwconv.dilation-square", f"depthwise dilation {d[0]}x{d[1]} differs between height and width")
            ok = False
        limit = 256 * self.cp
        dil = max(d)
        if dil * channels > limit:
            self.report(op, "dpu.dwconv.dilation-channels",
                        f"depthwise dilation {dil} x {channels} channels = {dil * channels} > 256 * {self.cp} = {limit}", max_channels=limit // dil)
            ok = False
        bank = alu["weight_bank"]
        depth = k[0] * k[1] * math.ceil(self.cp / bank["width"])
        if depth > bank["depth"]:
            self.report(op, "dpu.dwconv.bank-depth", f"depthwise weights need bank depth {k[0]}*{k[1]}*ceil({self.cp}/{bank['width']}) = {depth} > {bank['depth']}")
            ok = False
        return ok

    def conv_rank(self, op: Op, wshape: tuple[int, ...]) -> Placement:
        """A conv whose kernel is not 2-D: 3-D runs only on cores with conv3d, 1-D nowhere on the board."""
        kernel = list(wshape[2:])
        if len(kernel) == 3 and self.data["conv3d"]:
            return Placement(DPU, "conv")
        what = f"{len(kernel)}-D {'transposed conv' if op.op_type == 'ConvTranspose' else 'conv'} (kernel {kernel})"
        if len(kernel) == 3:
            self.report(op, "dpu.conv.3d", f"{what} does not run on {self.data['arch']['name']}")
        else:
            self.report(op, "dpu.conv.1d", f"{what} has no DPU kernel and no board CPU kernel: both convolve 2-D feature maps only")
        return Placement(UNSUPPORTED)

    def place_ConvTranspose(self, op: Op) -> Placement:
        wshape = self.graph.static_shape(op.node.input[1])
        if wshape is not None and len(wshape) != 4:
            return self.conv_rank(op, wshape)
        return Placement(DPU, "conv")

    def _matmul(self, op: Op, weight: str, k_dim: int, n_dim: int) -> Placement:
        g = self.graph
        wshape = g.static_shape(weight)
        if not g.is_const(weight) or wshape is None or len(wshape) != 2:
            self.report(op, "dpu.const-weight", f"{op.op_type} multiplies two feature maps (no constant 2-D weight)")
            return self.fallback(op)
        cin, cout = wshape[k_dim], wshape[n_dim]
        k = (1, 1)
        # Flatten/Reshape of an NCHW map into a Gemm: the compiler turns the pair into a conv with
        # an HxW kernel over C channels (UG1414: matmul is transformed to conv2d).
        preds = self.preds(op)
        if len(preds) == 1 and preds[0].op_type in ("Flatten", "Reshape"):
            src = g.static_shape(preds[0].node.input[0])
            if src and len(src) == 4 and src[1] * src[2] * src[3] == cin:
                k, cin = (src[2], src[3]), src[1]
        ok = self.conv_limits(op, k, (1, 1), (0, 0, 0, 0), (1, 1), cin, cout, global_window=True)
        return Placement(DPU, "conv") if ok else self.fallback(op)

    def place_Gemm(self, op: Op) -> Placement:
        trans_b = int(attr(op.node, "transB", 0))
        return self._matmul(op, op.node.input[1], 1 if trans_b else 0, 0 if trans_b else 1)

    def place_MatMul(self, op: Op) -> Placement:
        return self._matmul(op, op.node.input[1], 0, 1)

    # -- per-channel affine ops: fused into the producer, else a 1x1 depthwise conv ------------
    def _affine(self, op: Op) -> Placement:
        prev = self.fused_into(op)
        if prev is not None and prev.engine in ("conv", "alu"):
            return prev
        xshape = self.graph.static_shape(op.inputs[0]) if op.inputs else None
        channels = xshape[1] if xshape and len(xshape) >= 2 else 1
        ok = self.dwconv_limits(op, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), channels)
        return Placement(DPU, "alu") if ok else self.fallback(op)

    def place_BatchNormalization(self, op: Op) -> Placement:
        return self._affine(op)

    def _per_channel_const(self, op: Op) -> bool:
        g, node = self.graph, op.node
        consts = [i for i in node.input if g.is_const(i)]
        if len(consts) != 1 or len(op.inputs) != 1:
            return False
        cshape, xshape = g.static_shape(consts[0]), g.static_shape(op.inputs[0])
        if cshape is None or xshape is None:
            return False
        if math.prod(cshape) == 1:
            return True
        padded = (1,) * (len(xshape) - len(cshape)) + tuple(cshape)
        non_one = [i for i, dim in enumerate(padded) if dim != 1]
        return len(non_one) == 1 and non_one[0] in (1, len(xshape) - 1) and padded[non_one[0]] == xshape[non_one[0]]

    def _eltwise(self, op: Op) -> Placement:
        if len(op.inputs) == 1 and self._per_channel_const(op):
            return self._affine(op)
        kind = "Add" if op.op_type == "Sum" else op.op_type
        if len(op.inputs) >= 2 and kind in self.engines["eltwise"]["types"]:
            return Placement(DPU, "eltwise")
        self.report(op, "dpu.eltwise.type", f"{op.op_type} of {'a feature map and a non per-channel constant' if len(op.inputs) < 2 else 'these inputs'} is not a DPU element-wise op")
        return self.fallback(op)

    place_Add = place_Sum = place_Mul = _eltwise

    # -- activations --------------------------------------------------------------------------
    def _activation_kind(self, op: Op) -> str | None:
        node, g = op.node, self.graph
        if op.op_type == "Clip":
            lo, hi = attr(node, "min"), attr(node, "max")
            bounds = [g.value(name) if name else None for name in list(node.input[1:3])]
            if bounds:  # opset >= 11: min/max are inputs
                lo, hi = (None if b is None else float(b) for b in (bounds + [None])[:2])
            return {(0.0, 6.0): "relu6", (0.0, None): "relu"}.get((lo, hi))
        return {"Relu": "relu", "LeakyRelu": "leaky_relu", "HardSigmoid": "hsigmoid", "HardSwish": "hswish", "PRelu": "prelu"}[op.op_type]

    def place_activation(self, op: Op) -> Placement:
        kind = self._activation_kind(op)
        if kind is None:
            return self.cpu_op(op)
        if kind == "leaky_relu":
            alpha = float(attr(op.node, "alpha", 0.01))
            if abs(alpha - LEAKY_ALPHA) > 1e-7:
                self.report(op, "dpu.leaky-relu.alpha", f"LeakyReLU alpha {alpha:g} != 26/256 = {LEAKY_ALPHA}")
                return self.fallback(op)
        prev = self.fused_into(op)
        if prev is not None and prev.engine and kind in self.engines[prev.engine]["nonlinear"]:
            return prev
        if kind in self.engines["alu"].get("standalone", []):
            return Placement(DPU, "alu")
        allowed = sorted({a for e in self.engines.values() for a in e.get("nonlinear", [])})
        where = f"after {prev.engine} engine output" if prev is not None and prev.engine else "not directly after a DPU conv/add"
        self.report(op, "dpu.activation.fusable", f"{kind} {where} cannot be fused", activation=kind, allowed=", ".join(allowed))
        return self.fallback(op)

    # -- pooling ------------------------------------------------------------------------------
    def place_pool(self, op: Op) -> Placement:
        node, g = op.node, self.graph
        xshape = g.static_shape(node.input[0])
        kernel = attr(node, "kernel_shape")
        spatial = len(kernel) if kernel is not None else (len(xshape) - 2 if xshape else 2)
        if spatial != 2:
            what = f"kernel {list(kernel)}" if kernel is not None else f"over a {spatial + 2}-D tensor"
            self.report(op, "dpu.pool.rank", f"{spatial}-D {op.op_type} ({what}) has no DPU kernel and no board CPU kernel: "
                                             "both pool 2-D feature maps only")
            return Placement(UNSUPPORTED)
        in_hw = tuple(xshape[2:]) if xshape and len(xshape) == 4 else None
        if op.op_type.startswith("Global"):
            if in_hw is None:
                return Placement(DPU, "alu")
            k, s, pads = in_hw, (1, 1), (0, 0, 0, 0)
        else:
            k = _hw(attr(node, "kernel_shape"), 1)
            s = _hw(attr(node, "strides"), 1)
            pads = _pads(node, in_hw, k, s, (1, 1))
        alu = self.engines["alu"]
        ok = self._range(op, "dpu.pool.kernel", "pool kernel", tuple(k), alu["kernel"])
        if in_hw is None or tuple(in_hw) != tuple(k):
            ok &= self._range(op, "dpu.pool.stride", "pool stride", tuple(s), alu["stride"])
        ok &= self._alu_pads(op, "dpu.pool.pad", pads)
        return Placement(DPU, "alu") if ok else self.fallback(op)

    def _reduce_axes(self, op: Op) -> tuple[int, ...] | None:
        node = op.node
        axes = attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            val = self.graph.value(node.input[1])
            axes = None if val is None else [int(a) for a in val.ravel()]
        shape = self.graph.shape(node.input[0])
        if axes is None or shape is None:
            return None
        return tuple(sorted(a % len(shape) for a in axes))

    def place_ReduceMean(self, op: Op) -> Placement:
        if self._reduce_axes(op) == (2, 3):  # x.mean((2, 3)) is a global average pool
            return Placement(DPU, "alu")
        self.report(op, "dpu.unsupported-op", "ReduceMean over non-spatial axes has no DPU engine and no board CPU kernel")
        return Placement(UNSUPPORTED)

    def place_ReduceMax(self, op: Op) -> Placement:
        if self._reduce_axes(op) == (2, 3):  # alu_type max_reduce
            return Placement(DPU, "alu")
        return self.cpu_op(op)

    # -- data movement ------------------------------------------------------------------------
    def place_Concat(self, op: Op) -> Placement:
        preds = self.preds(op)
        if preds and all(self.placement[p.name].device == DPU for p in preds) and len(preds) == len(op.inputs):
            return Placement(DPU)
        shape = self.graph.shape(op.node.output[0])
        rank = len(shape) if shape is not None else 0
        axis = int(attr(op.node, "axis", 1))
        if rank == 4 and axis % 4 == 1:
            return Placement(DPU)
        self.report(op, "dpu.concat.axis", f"concat fed by a CPU op or graph input along axis {axis} of a {rank}-D tensor (needs 4-D, channel axis 1)")
        return self.fallback(op)

    def place_reshape(self, op: Op) -> Placement:
        preds = self.preds(op)
        if preds and all(self.placement[p.name].device == DPU for p in preds):
            return Placement(DPU)
        self.report(op, "dpu.reshape.placement", f"{op.op_type} input does not come from the DPU, so it runs on the board CPU (reshape-fix)")
        return Placement(CPU)

    def place_Pad(self, op: Op) -> Placement:
        mode = _decode(attr(op.node, "mode", "constant"))
        if mode in ("constant", "reflect"):  # dpu_op_filter.py filter_pad: CONSTANT or SYMMETRIC
            return Placement(DPU)
        return self.cpu_op(op)

    def _resize(self, op: Op, mode: str, align: bool, half_pixel: bool) -> Placement:
        g, node = self.graph, op.node
        xs, ys = g.static_shape(node.input[0]), g.static_shape(node.output[0])
        if mode == "nearest":
            return Placement(DPU)
        allowed = [2, 4] if half_pixel else [2, 4, 8]
        scales = tuple(ys[i] / xs[i] for i in (2, 3)) if xs and ys and len(xs) == 4 else None
        if mode in ("linear", "bilinear") and not align and scales and scales[0] == scales[1] and scales[0] in allowed:
            return Placement(DPU, "alu")
        why = "align_corners" if align else f"{mode} mode with scales {list(scales) if scales else 'unknown'}"
        self.report(op, "dpu.resize.mode", f"resize with {why} has no DPU path", scales="/".join(map(str, allowed)))
        return self.fallback(op)

    def place_Resize(self, op: Op) -> Placement:
        ctm = _decode(attr(op.node, "coordinate_transformation_mode", "half_pixel"))
        return self._resize(op, _decode(attr(op.node, "mode", "nearest")), ctm == "align_corners", ctm in ("half_pixel", "pytorch_half_pixel"))

    def place_Upsample(self, op: Op) -> Placement:
        return self._resize(op, _decode(attr(op.node, "mode", "nearest")), False, False)


def check_dpu(graph: ModelGraph, ops: list[Op], rules: RuleSet) -> tuple[dict[str, Placement], list[Finding]]:
    """Place every counted op of ``graph`` on the DPU target ``rules`` and list the findings."""
    return DpuChecker(graph, ops, rules).run()
