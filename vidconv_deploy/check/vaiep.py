"""Vitis AI Execution Provider rules: which nodes the EP's device takes, and which fall back to the CPU.

The EP tells only whether a whole session fell back (``session.disable_cpu_ep_fallback``), so each
node that would leave the device is named here, with the table row or DPU rule that sends it away.
Two kinds of rule set:

- ``dpu_rules`` (VEK280, Vitis AI 3.5): the EP compiles DPU subgraphs with the DPU compiler, so the
  DPU rule set of the same core decides; every op it keeps off the DPU falls back to ONNX Runtime's
  CPU EP (which has a kernel for every standard op, so "no board CPU kernel" also means fallback).
- ``table`` (Versal AI Edge Gen 2 NPU, Vitis AI 6.2; Ryzen AI NPU, Ryzen AI 1.5): AMD's alphabetical
  supported-operators table, its INT8 column (Ryzen AI: XINT8) for quantized nodes and its FP32/BF16
  column (Ryzen AI: BF16) for nodes left in float or cast to bfloat16.

QuantizeLinear/DequantizeLinear nodes are what the EP compiles the quantization from, not ops of their own.
"""

from __future__ import annotations

from typing import Any

from vidconv_deploy.check.dpu import DPU, check_dpu
from vidconv_deploy.check.graph import ModelGraph
from vidconv_deploy.check.ops import Op
from vidconv_deploy.check.result import Finding
from vidconv_deploy.check.ruleset import RuleSet, load_ruleset

NPU, CPU = "NPU", "CPU"
#: A table's two columns: the one float nodes are judged by, the one quantized nodes are (rule sets may name theirs).
DEFAULT_COLUMNS = ("FP32/BF16", "INT8")


def _finding(rules: RuleSet, op: Op, rule_id: str, message: str, source: str, **fmt: Any) -> Finding:
    rule = rules.rule(rule_id)
    return Finding(op.name, op.op_type, rule_id, message, rule["fix"].format(op_type=op.op_type, **fmt),
                   rule["source"].format(source=source), rule["severity"])


def _quantized(graph: ModelGraph, op: Op, qdq: set[str]) -> bool:
    """Whether an input of the op comes from a DequantizeLinear (Quark quantized it), or the graph has no QDQ at all."""
    if not any(n.op_type in qdq for n in graph.model.graph.node):
        return True  # a float graph checked before quantization: judged as it will be quantized
    producers = {out: n for n in graph.model.graph.node for out in n.output}
    return any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for op_node in op.nodes
               for i in op_node.input)


def _table_place(graph: ModelGraph, rules: RuleSet, op: Op, qdq: set[str], findings: list[Finding]) -> str:
    data = rules.data
    table, evidence = data["table"], data.get("evidence", {"ops": []})
    row_name = data.get("composites", {}).get(op.op_type, op.op_type)
    if row_name in evidence["ops"]:
        return NPU
    row = table["ops"].get(row_name)
    quantized = _quantized(graph, op, qdq)
    column = table.get("columns", DEFAULT_COLUMNS)[1 if quantized else 0]
    if row is not None:
        cell = row[1 if quantized else 0]
        if cell == "Y":
            return NPU
        findings.append(_finding(rules, op, "vaiep.cpu-fallback", f"{row_name} is listed without {column} support "
                                 f"({column}: {'empty' if cell == '-' else cell})", table["source"]))
        return CPU
    if row_name > table["read_through"]:
        findings.append(_finding(rules, op, "vaiep.unverified", f"{row_name} sorts after {table['read_through']}, "
                                 f"past the rows of the table this rule set was written from", table["source"]))
        return NPU
    findings.append(_finding(rules, op, "vaiep.cpu-fallback", f"{row_name} is not in the supported-operators table "
                             f"(its rows run {next(iter(table['ops']))} to {table['read_through']} alphabetically)",
                             table["source"]))
    return CPU


def _dpu_place(graph: ModelGraph, rules: RuleSet, ops: list[Op], findings: list[Finding]) -> dict[str, str]:
    dpu_rules = load_ruleset(rules.data["dpu_rules"])
    placement, dpu_findings = check_dpu(graph, ops, dpu_rules)
    why: dict[str, list[str]] = {}
    for f in dpu_findings:
        why.setdefault(f.node, []).append(f"{f.message} ({f.rule})")
    devices = {}
    for op in ops:
        if op.name not in placement:
            continue
        if placement[op.name].device == DPU:
            devices[op.name] = NPU
            continue
        devices[op.name] = CPU
        reasons = "; ".join(why.get(op.name, [f"{op.op_type} has no DPU path"]))
        findings.append(_finding(rules, op, "vaiep.cpu-fallback", f"leaves the DPU: {reasons}", rules.data["dpu_rules_source"]))
    return devices


def check_vaiep(graph: ModelGraph, ops: list[Op], rules: RuleSet) -> tuple[dict[str, str], list[Finding]]:
    """Device of every counted op ("NPU": the EP's DPU/NPU, "CPU": fallback) and a finding per fallback."""
    data = rules.data
    findings: list[Finding] = []
    if graph.opset > data["max_opset"]:
        findings.append(Finding("<graph>", "-", "vaiep.opset", f"opset {graph.opset} is above {data['max_opset']}",
                                rules.rule("vaiep.opset")["fix"].format(max_opset=data["max_opset"]),
                                rules.rule("vaiep.opset")["source"].format(source=data["max_opset_source"]),
                                rules.rule("vaiep.opset")["severity"]))  # Ryzen AI: a recommendation, a warning
    for vi in graph.model.graph.input:
        if not graph.is_const(vi.name) and graph.static_shape(vi.name) is None:
            findings.append(Finding(vi.name, "input", "vaiep.static-shape", f"graph input {vi.name!r} is not static",
                                    rules.rule("vaiep.static-shape")["fix"],
                                    rules.rule("vaiep.static-shape")["source"].format(source=data["max_opset_source"])))
    qdq = set(data["qdq_ops"])
    counted = [op for op in ops if not op.elided and op.op_type not in qdq]
    if "dpu_rules" in data:
        return _dpu_place(graph, rules, counted, findings), findings
    return {op.name: _table_place(graph, rules, op, qdq, findings) for op in counted}, findings
