"""Quantize a float deploy ONNX graph the way vai_q_pytorch quantizes for the DPU, and write it as QDQ ONNX.

Steps, each following the Vitis AI 3.5 source (VAI = Xilinx/Vitis-AI src/vai_quantizer/vai_q_pytorch):

1. :func:`vidconv_deploy.quant.graph.analyse`: vai_q's quantization points on the ONNX graph.
2. :func:`vidconv_deploy.quant.calibrate.calibrate`: the fake-quantized calibration pass (diffs, mode).
3. :func:`organize_positions`: ``TORCHQuantizer.organize_quant_pos`` / ``QuantizeFixPosChecker``
   (``VAI/pytorch_binding/pytorch_nndct/quantization/torchquantizer.py``): forward over the nodes,
   hard-sigmoid bounds and the conv shift_cut/shift_bias fix-ups (``fix_pos_adjust.py``). With the
   default options (``nndct_change_concat_input_fix``, ``nndct_change_add_input_fix``,
   ``nndct_change_pool_input_fix`` all False in ``VAI/nndct_shared/utils/option_list.py``), Concat, Add
   and pools do *not* force their inputs to their output position; a Concat's sole-use inputs share its
   position through ``quant_output`` instead. Then, when asked, :mod:`~vidconv_deploy.quant.recovery` tunes
   the float weights and biases (bias correction or fast finetune) with every position kept, and the
   fix-ups run once more.
4. :func:`build_qdq`: int8 weight/bias initializers + DequantizeLinear, a QuantizeLinear/DequantizeLinear
   pair per quantized activation, all scales 2**-fix_point, zero points int8 0. DPU approximations are
   explicit ops so ONNX Runtime computes them: average pools and means become a window *sum* times the
   DPU's dyadic factor, LeakyReLU gets slope 26/256, HardSigmoid becomes relu6(x + 3) * 2731/16384.

Tensor names: a quantized activation ``T`` keeps its name as the DequantizeLinear output (its producer now
writes ``T_prequant``, the int8 codes are ``T_quantized``); a graph input ``X`` stays the graph input and
its dequantized copy is ``X_dequantized``; a weight ``W`` is the DequantizeLinear output of the int8
initializer ``W_quantized``. The model's metadata ``vidconv_deploy.quant_tensors`` maps every
dequantized name to the float graph's name, and quant_info.json records the same.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from vidconv_deploy.atomic import write_text
from vidconv_deploy.errors import UserError
from vidconv_deploy.fixpoint import arithmetic as fixpoint
from vidconv_deploy.fixpoint.kernels import single_threaded
from vidconv_deploy.fixpoint.qdq_metadata import TENSOR_MAP_KEY
from vidconv_deploy.progress import Subtask, no_subtask
from vidconv_deploy.quant.calibrate import (
    DPU_HSIGMOID_SCALE,
    DPU_LEAKY_SLOPE,
    avgpool_window,
    calibrate,
    input_shape,
    pool_sum_factor,
    reduce_axes,
)
from vidconv_deploy.quant.graph import (
    CONST_OP,
    CONV_OPS,
    INPUT_OP,
    PASS_THROUGH_OPS,
    GraphPlan,
    Node,
    analyse,
)
from vidconv_deploy.quant.layerwise import CalibratedPlan
from vidconv_deploy.quant.recovery import check_method, recover
from vidconv_deploy.version import __version__

ZERO_POINT = "quant_zero_point_int8"


@dataclass
class QuantResult:
    """The QDQ model and its quant_info.json content."""

    model: onnx.ModelProto
    info: dict[str, Any]


@dataclass
class Positions:
    """Fix positions by quant key (activations) and by initializer name (weights, biases)."""

    act: dict[str, int]
    params: dict[str, int]


def _fixed_keys(plan: GraphPlan, fixed: Mapping[str, int] | None) -> dict[str, int]:
    """Translate ``fixed_fix_points`` (tensor names) to quant keys / parameter names."""
    by_tensor = {p.tensor: key for key, p in plan.points.items()}
    out: dict[str, int] = {}
    for name, pos in (fixed or {}).items():
        if not isinstance(pos, (int, np.integer)):
            raise UserError(f"fixed_fix_points[{name!r}] = {pos!r}; a fix position is an integer")
        key = name if name in plan.params else by_tensor.get(name)
        if key is None and name in plan.producer and plan.producer[name].op in PASS_THROUGH_OPS:
            key = plan.key_for(plan.producer[name])  # a reshape/flatten/slice of a quantized tensor shares its position
        if key is None:
            known = ", ".join(sorted(by_tensor)[:8])
            raise UserError(f"fixed_fix_points names {name!r}, which is not a quantized tensor of this graph (e.g. {known})")
        out[key] = int(pos)
    return out


def _set(positions: dict[str, int], key: str, value: int, fixed: Mapping[str, int], why: str, log: list[dict]) -> None:
    if positions[key] == value:
        return
    if key in fixed:
        raise UserError(f"{why} needs fix position {value} for {key!r}, which fixed_fix_points pins to {fixed[key]}; unpin it")
    log.append({"tensor": key, "from": positions[key], "to": value, "rule": why})
    positions[key] = value


def organize_positions(plan: GraphPlan, pos: Positions, fixed: Mapping[str, int]) -> tuple[list[dict], dict[str, dict]]:
    """vai_q's post-calibration fix-ups, in node order; returns the adjustment log and each conv's final shifts."""
    log: list[dict] = []
    convs: dict[str, dict] = {}
    for node in plan.nodes:
        if node.op == "HardSigmoid":  # FixPosChecker.output_must_larger_than_7 / input_must_larger_than_0
            out = plan.key_for(node)
            if out is not None and pos.act[out] < 7:
                _set(pos.act, out, 7, fixed, f"hsigmoid {node.name}: output position >= 7", log)
            for parent in plan.parents(node):
                key = plan.key_for(parent)
                if key is not None and pos.act[key] < 0:
                    _set(pos.act, key, 0, fixed, f"hsigmoid {node.name}: input position >= 0", log)
        if node.op not in CONV_OPS:
            continue
        k_in, k_out = plan.input_key(node), plan.key_for(node)
        if k_in is None or k_out is None:  # the source warns "not quantized" and skips the check
            continue
        w, b = plan.weight_and_bias(node)
        before = fixpoint.ConvPositions(pos.act[k_in], pos.params[w], pos.act[k_out], None if b is None else pos.params[b])
        if before.shift_cut < fixpoint.SHIFT_CUT_MIN and k_out in fixed:
            # The source would lower the output position; a pinned output keeps it and the weight position
            # rises to make shift_cut 0 instead (more weights may saturate).
            raised = before.output - before.input
            _set(pos.params, w, raised, fixed, f"conv {node.name}: shift_cut >= 0 with pinned output", log)
            before.weight = raised
        after = fixpoint.shift_cut_bias(before)
        _set(pos.act, k_out, after.output, fixed, f"conv {node.name}: shift_cut in [0, 16]", log)
        _set(pos.params, w, after.weight, fixed, f"conv {node.name}: shift_cut/shift_bias <= 16", log)
        if b is not None:
            _set(pos.params, b, after.bias, fixed, f"conv {node.name}: shift_bias lower bound", log)
        convs[node.name] = {"input": k_in, "output": k_out, "weight": w, "bias": b}
    for c in convs.values():  # final shifts, after every fix-up (a later one can move an earlier input)
        final = fixpoint.ConvPositions(pos.act[c["input"]], pos.params[c["weight"]], pos.act[c["output"]],
                                       None if c["bias"] is None else pos.params[c["bias"]])
        c.update(shift_cut=final.shift_cut, shift_bias=final.shift_bias)
    return log, convs


# ---- QDQ graph -----------------------------------------------------------------------------------


class _Builder:
    """Collects the QDQ graph's nodes and initializers."""

    def __init__(self, plan: GraphPlan) -> None:
        self.plan = plan
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, TensorProto] = {}
        self.add_init(ZERO_POINT, np.array(0, dtype=np.int8))

    def add_init(self, name: str, value: np.ndarray) -> str:
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(value, name)
        return name

    def scale(self, fix_pos: int) -> str:
        tag = f"m{-fix_pos}" if fix_pos < 0 else str(fix_pos)
        return self.add_init(f"quant_scale_fp{tag}", np.array(2.0**-fix_pos, dtype=np.float32))

    def dequantize(self, codes: str, fix_pos: int, out: str) -> None:
        self.nodes.append(helper.make_node("DequantizeLinear", [codes, self.scale(fix_pos), ZERO_POINT], [out], name=f"{out}/DequantizeLinear"))

    def qdq(self, src: str, fix_pos: int, q: str, dq: str) -> None:
        self.nodes.append(helper.make_node("QuantizeLinear", [src, self.scale(fix_pos), ZERO_POINT], [q], name=f"{q}/QuantizeLinear"))
        self.dequantize(q, fix_pos, dq)

    def int8_constant(self, name: str, fix_pos: int, mode: str) -> None:
        """Replace float initializer ``name`` by int8 codes ``name_quantized`` and a DequantizeLinear to ``name``."""
        value = torch.as_tensor(self.plan.initializers[name].astype(np.float32))
        codes = fixpoint.quantize_int(value, fix_pos, mode).numpy()
        self.add_init(f"{name}_quantized", codes)
        self.dequantize(f"{name}_quantized", fix_pos, name)


def _factor_init(b: _Builder, node: Node, value: Fraction) -> str:
    return b.add_init(f"{node.name}/dpu_factor", np.array(float(value), dtype=np.float32))


def _lower(b: _Builder, node: Node, approximations: dict[str, dict]) -> list[onnx.NodeProto]:
    """The node as QDQ-graph nodes, with vai_q's DPU approximations made explicit; same output names."""
    plan, proto = b.plan, node.proto
    assert proto is not None
    out = proto.output[0]
    if node.op == "LeakyRelu":
        approximations[node.name] = {"op": "LeakyRelu", "alpha": float(node.attr("alpha", 0.01)), "dpu_alpha": "26/256"}
        return [helper.make_node("LeakyRelu", [proto.input[0]], [out], name=proto.name, alpha=float(DPU_LEAKY_SLOPE))]
    if node.op == "HardSigmoid":
        three = b.add_init(f"{node.name}/three", np.array(3.0, dtype=np.float32))
        zero = b.add_init(f"{node.name}/zero", np.array(0.0, dtype=np.float32))
        six = b.add_init(f"{node.name}/six", np.array(6.0, dtype=np.float32))
        factor = _factor_init(b, node, DPU_HSIGMOID_SCALE)
        approximations[node.name] = {"op": "HardSigmoid", "formula": "relu6(x + 3) * 2731 / 16384"}
        return [
            helper.make_node("Add", [proto.input[0], three], [f"{out}/plus3"], name=f"{proto.name}/add3"),
            helper.make_node("Clip", [f"{out}/plus3", zero, six], [f"{out}/relu6"], name=f"{proto.name}/relu6"),
            helper.make_node("Mul", [f"{out}/relu6", factor], [out], name=f"{proto.name}/scale"),
        ]
    factor = pool_sum_factor(plan, node)
    if factor is None:
        copy = onnx.NodeProto()
        copy.CopyFrom(proto)
        return [copy]
    multiplier, shift = fixpoint.fraction_to_int_exp(factor)
    shape = input_shape(plan, node)
    if node.op == "AveragePool":
        win = avgpool_window(node)
        kernel = win.kernel
        ones = b.add_init(f"{node.name}/window_ones", np.ones((shape[1], 1, *kernel), dtype=np.float32))
        top, left, bottom, right = win.pads
        summed = helper.make_node("Conv", [proto.input[0], ones], [f"{out}/window_sum"], name=f"{proto.name}/window_sum",
                                  kernel_shape=list(kernel), strides=list(win.strides), pads=[top, left, bottom, right],
                                  group=shape[1])
    else:
        axes = [2, 3] if node.op == "GlobalAveragePool" else reduce_axes(plan, node, len(shape))
        keep = 1 if node.op == "GlobalAveragePool" else int(node.attr("keepdims", 1))
        kernel = tuple(shape[a] for a in axes)
        axes_name = b.add_init(f"{node.name}/axes", np.array(axes, dtype=np.int64))
        summed = helper.make_node("ReduceSum", [proto.input[0], axes_name], [f"{out}/window_sum"], name=f"{proto.name}/window_sum", keepdims=keep)
    approximations[node.name] = {"op": node.op, "kernel": list(kernel), "multiplier": multiplier, "shift": shift,
                                 "formula": f"sum * {multiplier} / 2**{shift}"}
    scale = helper.make_node("Mul", [f"{out}/window_sum", _factor_init(b, node, factor)], [out], name=f"{proto.name}/dpu_divide")
    return [summed, scale]


def build_qdq(plan: GraphPlan, pos: Positions) -> tuple[onnx.ModelProto, dict[str, dict], dict[str, dict], dict[str, dict]]:
    """The QDQ model; also the per-activation and per-parameter tensor mapping and the approximations used."""
    b = _Builder(plan)
    tensors: dict[str, dict] = {}
    params: dict[str, dict] = {}
    approximations: dict[str, dict] = {}
    rename: dict[str, str] = {}
    for name, point in plan.params.items():
        b.int8_constant(name, pos.params[name], fixpoint.PARAM_ROUNDING)
        params[name] = {"owner": point.owner.name, "role": point.role, "quantized": f"{name}_quantized", "dequantized": name}
    for key, point in plan.points.items():
        t, fp = point.tensor, pos.act[key]
        entry = {"node": key, "op": point.node.op, "float_tensor": t, "quantized": f"{t}_quantized", "dequantized": t}
        if point.node.op == INPUT_OP:
            entry["dequantized"] = rename[t] = f"{t}_dequantized"
            b.qdq(t, fp, entry["quantized"], entry["dequantized"])
        elif point.node.op == CONST_OP:  # a constant operand is an "output" tensor to vai_q: half_up rounding
            b.int8_constant(t, fp, fixpoint.ACTIVATION_ROUNDING)
        tensors[key] = entry
    by_name = plan.by_name
    for proto in plan.model.graph.node:
        node = by_name[proto.name]
        lowered = _lower(b, node, approximations)
        for n in lowered:
            for i, name in enumerate(n.input):
                if name in rename:
                    n.input[i] = rename[name]
        point = plan.points.get(node.name)
        if point is not None:
            t = point.tensor
            producer = next(n for n in lowered if t in n.output)
            producer.output[list(producer.output).index(t)] = f"{t}_prequant"
            b.nodes.extend(lowered)
            b.qdq(f"{t}_prequant", pos.act[node.name], f"{t}_quantized", t)
        else:
            b.nodes.extend(lowered)
    src = plan.model.graph
    kept = [init for init in src.initializer if init.name not in plan.params and not (
        init.name in plan.points and plan.points[init.name].node.op == CONST_OP)]
    outputs = [helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type or TensorProto.FLOAT, plan.shapes.get(o.name))
               for o in src.output]
    graph = helper.make_graph(b.nodes, src.name or "qdq", list(src.input), outputs, [*kept, *b.inits.values()])
    model = helper.make_model(graph, opset_imports=list(plan.model.opset_import), producer_name="vidconv_deploy.quant")
    model.ir_version = plan.model.ir_version
    tensor_map = {e["dequantized"]: e["float_tensor"] for e in tensors.values()}
    helper.set_model_props(model, {TENSOR_MAP_KEY: json.dumps(tensor_map, sort_keys=True)})
    onnx.checker.check_model(model)
    return model, tensors, params, approximations


def quantize_onnx(
    float_model: onnx.ModelProto,
    calib_feeds: Iterable[dict[str, np.ndarray]],
    *,
    fixed_fix_points: dict[str, int] | None = None,
    method: str = "diffs",
    recovery: str = "none",
    progress: Subtask = no_subtask,
) -> QuantResult:
    """Quantize ``float_model`` with vai_q_pytorch's DPU arithmetic; return the QDQ model and quant_info.

    ``calib_feeds`` are feeds for the float graph (input name -> float32 array), one per calibration batch.
    ``fixed_fix_points`` pins tensors (by float-graph tensor name, or weight/bias initializer name) to a fix
    position, e.g. the second graph of a streaming split must read its input at the first graph's output
    position. ``recovery`` ("none", "bias_correction", "fast_finetune"; :mod:`~vidconv_deploy.quant.recovery`)
    then tunes the float weights and biases on the same feeds, positions kept, and the shift rules are
    applied once more. Raises UserError for unsupported ops, impossible pins or an unknown recovery.
    """
    check_method(recovery)
    if recovery != "none" and not isinstance(calib_feeds, (Mapping, Sequence)):
        calib_feeds = list(calib_feeds)  # recovery reads the feeds again after calibration
    plan = analyse(float_model)
    fixed = _fixed_keys(plan, fixed_fix_points)
    calib = calibrate(plan, calib_feeds, fixed=fixed, method=method, progress=progress)
    pos = Positions(dict(calib.activations), dict(calib.params))
    log, convs = organize_positions(plan, pos, fixed)
    calibrated = CalibratedPlan(plan, pos.act, pos.params, calib_feeds, lambda: build_qdq(plan, pos)[0])
    recovered = recover(recovery, calibrated, progress=progress)
    if recovery != "none":
        again, convs = organize_positions(plan, pos, fixed)
        log += again
    with single_threaded():
        model, tensors, params, approximations = build_qdq(plan, pos)
    info: dict[str, Any] = {
        # vai_q_pytorch's Quant_info.json layout (export_quant_config -> normalized_quant_config):
        # param/output/input: name -> [[bit_width, fix_position]] per tensor
        "param": {name: [[fixpoint.BIT_WIDTH, pos.params[name]]] for name in plan.params},
        "output": {key: [[fixpoint.BIT_WIDTH, pos.act[key]]] for key in plan.points},
        "input": {},
        "fast_finetuned": recovery == "fast_finetune",
        "bias_corrected": recovery == "bias_correction",
        "version": f"vidconv_deploy {__version__} (vai_q_pytorch 3.5 DPU rules)",
        "graph_md5": hashlib.md5(float_model.SerializeToString()).hexdigest(),
        # ours: how the vai_q-style entries map onto the ONNX graphs, and how they were reached
        "onnx": {
            "tensors": tensors,
            "params": params,
            "convs": convs,
            "adjustments": log,
            "approximations": approximations,
            "fixed_fix_points": dict(fixed),
            "calibration": {"method": method, "batches": calib.batches, "history": calib.history},
            "recovery": recovered,
        },
    }
    return QuantResult(model, info)


def write_quant_info(info: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write quant_info.json atomically."""
    write_text(path, json.dumps(info, indent=2, sort_keys=False) + "\n")
