"""FINN rules: which ops become HW layers inside the dataflow partition.

An op without a FINN HW layer stays in the host-side parent graph; in the middle of a network it
cuts the dataflow partition in two (FINN issues 279, 954), so it is an error.
"""

from __future__ import annotations

from vidconv_deploy.check.dpu import attr
from vidconv_deploy.check.graph import ModelGraph
from vidconv_deploy.check.ops import Op
from vidconv_deploy.check.result import Finding
from vidconv_deploy.check.ruleset import RuleSet

FPGA, CPU = "FPGA", "CPU"


def _finding(rules: RuleSet, op: Op, rule_id: str, message: str, **fmt: object) -> Finding:
    rule = rules.rule(rule_id)
    return Finding(op.name, op.op_type, rule_id, message, rule["fix"].format(op_type=op.op_type, **fmt), rule["source"], rule["severity"])


def _place(graph: ModelGraph, rules: RuleSet, op: Op, findings: list[Finding]) -> str:
    data = rules.data
    if op.op_type in data["composites"]:
        info = data["composites"][op.op_type]
        findings.append(Finding(op.name, op.op_type, "finn.not-dataflow", f"{op.op_type} has no FINN HW layer", info["fix"], info["source"]))
        return CPU
    if op.op_type not in data["hw_ops"]["ops"]:
        findings.append(_finding(rules, op, "finn.not-dataflow", f"{op.op_type} has no FINN HW layer; it stays outside the dataflow partition"))
        return CPU
    node = op.node
    if op.op_type == "Conv":
        group = int(attr(node, "group", 1))
        wshape = graph.static_shape(node.input[1])
        if group != 1 and not (wshape and wshape[0] == group and wshape[1] == 1):
            findings.append(_finding(rules, op, "finn.conv.group", f"grouped conv (group={group}) is neither a conv nor depthwise", group=group))
            return CPU
    if op.op_type in ("Resize", "Upsample"):
        mode = attr(node, "mode", b"nearest")
        xs, ys = graph.static_shape(node.input[0]), graph.static_shape(node.output[0])
        integer = xs is not None and ys is not None and all(y % x == 0 for x, y in zip(xs, ys))
        if (mode.decode() if isinstance(mode, bytes) else mode) != "nearest" or not integer:
            findings.append(_finding(rules, op, "finn.resize.mode", "only nearest resize with integer scales becomes UpsampleNearestNeighbour"))
            return CPU
    if op.op_type in data["shuffle_ops"]:
        findings.append(_finding(rules, op, "finn.shuffle", f"{op.op_type} may be left unconverted by streamlining"))
    return FPGA


def check_finn(graph: ModelGraph, ops: list[Op], rules: RuleSet) -> tuple[dict[str, str], list[Finding]]:
    """Place every counted op on the FPGA (a FINN HW layer) or the host CPU, with findings."""
    findings: list[Finding] = []
    devices = {op.name: _place(graph, rules, op, findings) for op in ops if not op.elided}
    if not any(n.op_type in rules.data["quantizer_ops"] for n in graph.nodes):
        rule = rules.rule("finn.quantized")
        findings.append(Finding("<graph>", "-", "finn.quantized", "the graph has no Quant/MultiThreshold/QuantizeLinear node: FINN needs a quantized (QONNX) model", rule["fix"], rule["source"], rule["severity"]))
    return devices, findings
