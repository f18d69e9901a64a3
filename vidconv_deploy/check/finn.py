"""FINN rules: which ops become HW layers inside the dataflow partition.

An op without a FINN HW layer stays in the host-side parent graph; in the middle of a network it
cuts the dataflow partition in two (FINN issues 279, 954), so it is an error. An op has one when
finn-plus's convert_to_hw converts it (``convert_to_hw`` in ``hw/rules/finn.yaml``, the same list
:mod:`vidconv_deploy.finn.flow` converts with), when streamlining lowers it into such an op, or
when it is a QONNX quantizer (FINN's input format). The nodes of a FINN HW-layer graph
(``finn_dataflow_*.onnx``) are HW layers already.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vidconv_deploy.check.dpu import attr
from vidconv_deploy.check.graph import ModelGraph
from vidconv_deploy.check.ops import Op
from vidconv_deploy.check.result import Finding
from vidconv_deploy.check.ruleset import RuleSet
from vidconv_deploy.check.validate import STANDARD_DOMAINS

FPGA, CPU = "FPGA", "CPU"


def converters(rules: RuleSet) -> dict[str, list[dict[str, Any]]]:
    """Op type -> the convert_to_hw steps that turn it into a HW layer (``convert_to_hw`` in finn.yaml)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for step in rules.data["convert_to_hw"]["steps"]:
        for op_type in step["ops"]:
            found.setdefault(op_type, []).append(step)
    return found


def is_versal(rules: RuleSet) -> bool:
    """Whether the rule set's board is a Versal part; one without a board is taken as Zynq."""
    part = rules.data.get("board", {}).get("part", "")
    return bool(part) and part.startswith(tuple(rules.data["versal_part_prefixes"]))


def _finding(rules: RuleSet, op: Op, rule_id: str, message: str, **fmt: object) -> Finding:
    rule = rules.rule(rule_id)
    return Finding(op.name, op.op_type, rule_id, message, rule["fix"].format(op_type=op.op_type, **fmt), rule["source"], rule["severity"])


def _affine_layernorm(graph: ModelGraph, op: Op) -> bool:
    """Whether the LayerNormalization has a scale other than 1 or a bias other than 0 (or ones not known)."""
    inputs = list(op.node.input)
    scale = graph.value(inputs[1])
    bias = graph.value(inputs[2]) if len(inputs) > 2 and inputs[2] else np.zeros(1)
    return scale is None or bias is None or bool(np.any(scale != 1)) or bool(np.any(bias != 0))


def _place(graph: ModelGraph, rules: RuleSet, op: Op, findings: list[Finding]) -> str:
    data, node = rules.data, op.node
    if node.domain.startswith(data["hw_layer_domain"]):
        return FPGA
    composite = data["composites"].get(op.op_type, {})
    if composite and "same_as" not in composite:
        findings.append(Finding(op.name, op.op_type, "finn.not-dataflow", f"{op.op_type} has no FINN HW layer", composite["fix"], composite["source"]))
        return CPU
    kind = composite.get("same_as", op.op_type)
    if kind in data["quantizer_ops"]:
        return FPGA
    if kind in data["shuffle_ops"]:
        findings.append(_finding(rules, op, "finn.shuffle", data["shuffle_ops"][kind]))
        return FPGA
    steps = converters(rules).get(kind)
    if steps is None and kind not in data["lowered"]["ops"]:
        if node.domain not in STANDARD_DOMAINS:
            findings.append(_finding(rules, op, "finn.unknown-custom-op", f"{kind} (domain {node.domain!r}) is neither a QONNX quantizer nor an op FINN converts"))
        else:
            findings.append(_finding(rules, op, "finn.not-dataflow", f"{kind} has no FINN HW layer; it stays outside the dataflow partition"))
        return CPU
    if steps and all(s.get("versal_only") for s in steps) and not is_versal(rules):
        info = data["versal_only"]
        findings.append(Finding(op.name, op.op_type, "finn.not-dataflow",
                                f"{kind} has a FINN HW layer ({steps[0]['transformation']}) only on Versal parts, and {rules.name} is not one",
                                info["fix"].format(op_type=kind), info["source"]))
        return CPU
    if kind == "Conv":
        group = int(attr(node, "group", 1))
        wshape = graph.static_shape(node.input[1])
        if group != 1 and not (wshape and wshape[0] == group and wshape[1] == 1):
            findings.append(_finding(rules, op, "finn.conv.group", f"grouped conv (group={group}) is neither a conv nor depthwise", group=group))
            return CPU
    if kind in ("Resize", "Upsample"):
        mode = attr(node, "mode", b"nearest")
        xs, ys = graph.static_shape(node.input[0]), graph.static_shape(node.output[0])
        integer = xs is not None and ys is not None and all(y % x == 0 for x, y in zip(xs, ys))
        if (mode.decode() if isinstance(mode, bytes) else mode) != "nearest" or not integer:
            findings.append(_finding(rules, op, "finn.resize.mode", "only nearest resize with integer scales becomes UpsampleNearestNeighbour"))
            return CPU
    if kind == "LayerNormalization" and _affine_layernorm(graph, op):
        findings.append(_finding(rules, op, "finn.layernorm.affine", "LayerNormalization with a scale or bias: InferLayerNorm leaves it unconverted"))
        return CPU
    return FPGA


def check_finn(graph: ModelGraph, ops: list[Op], rules: RuleSet) -> tuple[dict[str, str], list[Finding]]:
    """Place every counted op on the FPGA (a FINN HW layer) or the host CPU, with findings."""
    findings: list[Finding] = []
    devices = {op.name: _place(graph, rules, op, findings) for op in ops if not op.elided}
    hw_graph = any(n.domain.startswith(rules.data["hw_layer_domain"]) for n in graph.nodes)
    if not hw_graph and not any(n.op_type in rules.data["quantizer_ops"] for n in graph.nodes):
        rule = rules.rule("finn.quantized")
        findings.append(Finding("<graph>", "-", "finn.quantized", "the graph has no Quant/MultiThreshold/QuantizeLinear node: FINN needs a quantized (QONNX) model", rule["fix"], rule["source"], rule["severity"]))
    return devices, findings
