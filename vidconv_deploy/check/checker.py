"""The one entry point the CLI and the export pipeline share: check a model against a target."""

from __future__ import annotations

from pathlib import Path

import onnx

from vidconv_deploy.check.dpu import check_dpu
from vidconv_deploy.check.finn import check_finn
from vidconv_deploy.check.graph import load_graph
from vidconv_deploy.check.onnx_std import check_onnx
from vidconv_deploy.check.ops import build_ops
from vidconv_deploy.check.partition import partition
from vidconv_deploy.check.result import CheckResult
from vidconv_deploy.check.ruleset import RuleSet, load_ruleset
from vidconv_deploy.check.vaiep import check_vaiep


def check_model(model: onnx.ModelProto | str | Path, target: str | RuleSet) -> CheckResult:
    """Check ``model`` (a ModelProto or a path) against ``target``: a name (see :func:`list_targets`), or a
    resolved rule set (e.g. a DPU target for another DPU configuration, :func:`load_ruleset`).

    Bad input (missing file, not ONNX, a cycle, an unknown op domain, an unknown target) raises
    :class:`~vidconv_deploy.errors.UserError`.
    """
    rules = target if isinstance(target, RuleSet) else load_ruleset(target)
    graph = load_graph(model, frozenset(rules.data.get("extra_domains", [])))
    ops = build_ops(graph)
    if rules.family == "dpu":
        placement, findings = check_dpu(graph, ops, rules)
        devices = {name: p.device for name, p in placement.items()}
    elif rules.family == "finn":
        devices, findings = check_finn(graph, ops, rules)
    elif rules.family == "vaiep":
        devices, findings = check_vaiep(graph, ops, rules)
    else:
        devices, findings = check_onnx(graph, ops, rules)
    listing = [{"name": op.name, "op_type": op.op_type, "device": devices[op.name]} for op in ops if op.name in devices]
    crossing = graph if rules.family == "dpu" else None
    return CheckResult(target=rules.name, findings=findings, partition=partition(ops, devices, crossing), ops=listing)
