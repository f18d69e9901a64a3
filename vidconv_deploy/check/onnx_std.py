"""Plain ONNX rules: standard-domain ops with schemas at the model's opset, static shapes, a graph
the ONNX checker accepts. What any runtime or downstream toolchain assumes."""

from __future__ import annotations

import onnx

from vidconv_deploy.check.graph import ModelGraph
from vidconv_deploy.check.ops import Op
from vidconv_deploy.check.result import Finding
from vidconv_deploy.check.ruleset import RuleSet

STANDARD = ("", "ai.onnx")


def _finding(rules: RuleSet, node: str, op_type: str, rule_id: str, message: str) -> Finding:
    rule = rules.rule(rule_id)
    return Finding(node, op_type, rule_id, message, rule["fix"].format(op_type=op_type), rule["source"], rule["severity"])


def check_onnx(graph: ModelGraph, ops: list[Op], rules: RuleSet) -> tuple[dict[str, str], list[Finding]]:
    """Every counted op runs on "ONNX" unless it is outside the standard domain."""
    findings: list[Finding] = []
    devices: dict[str, str] = {}
    for op in ops:
        if op.elided:
            continue
        node = op.node
        devices[op.name] = "ONNX"
        if node.domain not in STANDARD:
            findings.append(_finding(rules, op.name, op.op_type, "onnx.standard-domain", f"{node.op_type} is in domain {node.domain!r}"))
            devices[op.name] = "unsupported"
            continue
        try:
            onnx.defs.get_schema(node.op_type, graph.opset, "")
        except onnx.defs.SchemaError:
            findings.append(_finding(rules, op.name, op.op_type, "onnx.schema", f"{node.op_type} has no schema at opset {graph.opset}"))
            devices[op.name] = "unsupported"
        for out in node.output:
            if out and graph.static_shape(out) is None:
                findings.append(_finding(rules, op.name, op.op_type, "onnx.static-shape", f"output {out!r} has shape {graph.shape(out)}, not static"))
    for vi in graph.model.graph.input:
        if not graph.is_const(vi.name) and graph.static_shape(vi.name) is None:
            findings.append(_finding(rules, vi.name, "input", "onnx.static-shape", f"graph input {vi.name!r} has shape {graph.shape(vi.name)}, not static"))
    # Everything else the ONNX checker asks was asked before any rule (vidconv_deploy.check.validate);
    # a graph output without a declared shape is the one thing it rejects that runtimes accept.
    for vi in graph.original.graph.output:
        if not vi.type.tensor_type.HasField("shape"):
            findings.append(_finding(rules, "<graph>", "-", "onnx.checker", f"graph output {vi.name!r} declares no shape, which the ONNX checker requires"))
    return devices, findings
