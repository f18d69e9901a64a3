"""The Vitis AI EP steps after the shared ones: both streaming graphs quantized by AMD Quark, the EP's
``vitisai_config.json`` and session code, the EP compile (where the EP is), accuracy and the report.

Quark calibrates on the same feeds as our own quantizer (every frame for the early graph, each
clip's host collage for the later one). Under a recipe's ``quantizer.precision`` bf16 or mixed_bf16
(a device that computes BF16) the INT8 graphs are made first, kept in ``quark_int8/`` and measured
against the deployed ones (:mod:`vidconv_deploy.quark.precision`). Without the EP and its device the
compile step writes ``ep/run_ep.py`` and records that it did not run; the QDQ graphs' accuracy is
ONNX Runtime's CPU run.
"""

from __future__ import annotations

import importlib.util
import json
import math
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from vidconv_deploy.atomic import write_bytes, write_text
from vidconv_deploy.check import check_model
from vidconv_deploy.errors import UserError
from vidconv_deploy.quark.env import versions
from vidconv_deploy.quark.ep import ep_options, run_ep_script, vitisai_config
from vidconv_deploy.quark.precision import (CANDIDATES_PER_NODE, Precision, bf16_nodes, choose_bf16_nodes, int8_errors,
                                            int8_only_missing, select_bf16, sqnr_db, unknown_nodes)
from vidconv_deploy.quark.quantize import QuarkResult, quantize_with_quark
from vidconv_deploy.report import Report
from vidconv_deploy.runners import GRAPHS, OnnxRuntimeRunner, StreamingSplit
from vidconv_deploy.targets.context import ExportContext, StepRun
from vidconv_deploy.targets.steps import step

EP = "VitisAIExecutionProvider"
#: Where a bf16/mixed_bf16 bundle keeps the INT8 graphs it is measured against.
INT8_ARTIFACT, INT8_DIR = "quark_int8_onnx", "quark_int8"


def recipe_precision(target) -> Precision:  # noqa: ANN001 - a Target (registry imports the steps)
    """The target's ``quantizer.precision`` choice, checked against its rule set's ``quark.bf16`` and ``quark.mixed_bf16``."""
    quark = target.ruleset.data["quark"]
    return Precision.of(target.name, target.quantizer, bool(quark.get("bf16")), bool(quark.get("mixed_bf16", True)))


def _feeds(ctx: ExportContext) -> dict[str, list[dict[str, np.ndarray]]]:
    graphs = ctx.value("graphs")
    split = StreamingSplit(ctx.model.cfg.grid, OnnxRuntimeRunner(graphs["early"]), OnnxRuntimeRunner(graphs["later"]))
    frames, collages = split.feeds(ctx.value("calibration")["clips"])
    return {"early": frames, "later": collages}


def _quark_from_bundle(ctx: ExportContext) -> dict[str, onnx.ModelProto] | None:
    paths = {g: ctx.directory / "quark" / f"{g}.onnx" for g in GRAPHS}
    return {g: onnx.load(str(p)) for g, p in paths.items()} if all(p.is_file() for p in paths.values()) else None


def register_loaders(ctx: ExportContext) -> None:
    """How the EP steps' values are rebuilt for a --start-from run."""
    ctx.loader("graphs_to_check", "export_streaming", lambda c: c.value("graphs"))
    ctx.loader("quark_feeds", "quark_quantize", _feeds)
    ctx.loader("quark", "quark_quantize", _quark_from_bundle)


def _finite(value: float, digits: int) -> float | None:
    """``value`` rounded for the manifest; None for an infinite SQNR (no noise), which JSON cannot hold."""
    return round(value, digits) if math.isfinite(value) else None


def _streaming_logits(ctx: ExportContext, early: onnx.ModelProto, later: onnx.ModelProto) -> list[np.ndarray]:
    split = StreamingSplit(ctx.model.cfg.grid, OnnxRuntimeRunner(early), OnnxRuntimeRunner(later))
    return [split.run_clip(clip).logits[0] for clip in ctx.value("calibration")["clips"]]


def _mixed(ctx: ExportContext, precision: Precision, int8: dict[str, QuarkResult]) -> tuple[dict[str, QuarkResult], dict]:
    """The bf16/mixed_bf16 graphs and how their BF16 nodes were chosen: the recipe's, or the ops the table lists
    without INT8 and the candidates (worst INT8 input error) that raise the streaming logits' SQNR against float on
    the calibration clips (:func:`vidconv_deploy.quark.precision.select_bf16`)."""
    spec, data = ctx.target.ruleset.data["quark"], ctx.target.ruleset.data
    feeds, graphs = ctx.value("quark_feeds"), ctx.value("graphs")
    exclude = list(ctx.target.quantizer.get("nodes_to_exclude", []))
    if unknown := unknown_nodes(precision, graphs):
        raise UserError(f"recipe {ctx.target.name}: quantizer.bf16_nodes names {', '.join(map(repr, unknown))}, a node "
                        f"of neither streaming graph: give node names of early.onnx or later.onnx in the bundle")
    int8_less = {g: int8_only_missing(graphs[g], data.get("table", {}).get("ops", {})) for g in GRAPHS}
    auto = precision.name == "mixed_bf16" and not precision.nodes
    why: dict[str, Any] = {g: {"by": "auto" if auto else "recipe" if precision.nodes else "every node",
                               "without_int8": int8_less[g]} for g in GRAPHS}
    selected: dict[str, list[str]] = {g: [] for g in GRAPHS}
    if auto:
        names = {g: {n.name for n in graphs[g].graph.node} for g in GRAPHS}
        errors = {g: [e for e in int8_errors(int8[g].model, graphs[g], feeds[g]) if e.node in names[g]] for g in GRAPHS}
        candidates = {g: [e.node for e in errors[g][:CANDIDATES_PER_NODE * precision.auto]] for g in GRAPHS}
        reference = _streaming_logits(ctx, graphs["early"], graphs["later"])
        selected, trail = select_bf16({g: int8[g].model for g in GRAPHS}, graphs, candidates, int8_less, precision.auto,
                                      lambda m: sqnr_db(reference, _streaming_logits(ctx, m["early"], m["later"])))
        for g in GRAPHS:
            why[g]["candidates"] = [{"node": e.node, "op_type": e.op_type, "tensor": e.tensor,
                                     "int8_input_sqnr_db": _finite(e.sqnr_db, 2)} for e in errors[g] if e.node in candidates[g]]
            why[g]["selection"] = [{"node": t["node"], "logits_sqnr_db": _finite(t["logits_sqnr_db"], 3)}
                                   for t in trail if t["node"] is None or t["graph"] == g]
    results = {}
    for g in GRAPHS:
        chosen = choose_bf16_nodes(graphs[g], precision, int8_less[g], selected[g])
        config = "BF16" if precision.name == "bf16" else spec["config"]
        results[g] = quantize_with_quark(graphs[g], feeds[g], config, exclude,
                                         bf16_nodes=chosen if precision.name == "mixed_bf16" else ())
    return results, why


def _check_deployed(ctx: ExportContext, results: dict[str, QuarkResult], precision: str) -> dict[str, list[dict]]:
    """The verdict ``compliant_bf16``: the deployed graphs against the rule set, each node by its table column (INT8
    after a DequantizeLinear, BF16 after a Cast). The check step judged the float graphs as all INT8; a BF16 node is
    another row's cell (Ryzen AI lists LayerNormalization for XINT8 only, Relu has no BF16 cell)."""
    found = {g: [{"node": f.node, "op_type": f.op_type, "rule": f.rule, "severity": f.severity, "message": f.message}
                 for f in check_model(r.model, ctx.target.ruleset).findings] for g, r in results.items()}
    errors = [f"{g}: {f['node']}" for g, fs in found.items() for f in fs if f["severity"] == "error"]
    ctx.verdict.record("compliant_bf16", not errors, f"{precision} graphs: " + (", ".join(errors) + " fall back to the CPU"
                                                                              if errors else "every op maps"))
    return found


@step("quark_quantize", "quantize (Quark)")
def step_quark_quantize(ctx: ExportContext, run: StepRun) -> None:
    """Both streaming graphs through Quark's config for this target (XINT8 or VINT8), excluded nodes left in float;
    under precision bf16 or mixed_bf16 the deployed graphs have BF16 nodes, measured against the INT8 ones."""
    spec = ctx.target.ruleset.data["quark"]
    precision = recipe_precision(ctx.target)
    exclude = list(ctx.target.quantizer.get("nodes_to_exclude", []))
    feeds, graphs = ctx.value("quark_feeds"), ctx.value("graphs")
    int8 = {g: quantize_with_quark(graphs[g], feeds[g], spec["config"], exclude) for g in GRAPHS}
    results, chosen = (int8, {}) if precision.name == "int8" else _mixed(ctx, precision, int8)
    ctx.set("quark", {g: r.model for g, r in results.items()})
    for g, r in results.items():
        ctx.bundle.write_onnx(f"quark_{g}_onnx", f"quark/{g}.onnx", r.model)
        write_text(ctx.directory / "quark" / f"{g}.log", r.log)
    forms = {spec["config"]: int8}
    if precision.name != "int8":
        for g, r in int8.items():
            write_bytes(ctx.directory / INT8_DIR / f"{g}.onnx", r.model.SerializeToString())
        ctx.bundle.record_dir(INT8_ARTIFACT, INT8_DIR)
        forms[precision.name] = results
    # logits of each form against the float graphs', end to end through the streaming split, on the calibration clips
    reference = _streaming_logits(ctx, graphs["early"], graphs["later"])
    measured = {}
    for name, form in forms.items():
        logits = _streaming_logits(ctx, form["early"].model, form["later"].model)
        measured[name] = {"logits_sqnr_db": _finite(sqnr_db(reference, logits), 3),
                          "top1_agreement": float(np.mean([a.argmax() == b.argmax() for a, b in zip(reference, logits, strict=True)]))}
    in_bf16 = {g: bf16_nodes(r.model) for g, r in results.items()}
    record = {"config": spec["config"], "precision": precision.name, "nodes_to_exclude": exclude,
              "bf16_nodes": in_bf16, "bf16_choice": chosen, "vs_float": measured,
              "vs_float_on": f"{len(reference)} calibration clip{'s' if len(reference) != 1 else ''}, streaming split, "
                             f"ONNX Runtime CPU",
              "versions": versions()}
    config = {**record, "source": spec["source"], "options": results["early"].options["extra_options"]}
    if precision.name != "int8":
        config["bf16_source"] = spec["bf16_source"]
    ctx.bundle.write_json("quark_config", "quark/quark_config.json", config)
    if precision.name != "int8":
        record["deployed_findings"] = _check_deployed(ctx, results, precision.name)
    ctx.fields["quark"] = record
    run.record.update(config=spec["config"], precision=precision.name, clips=len(ctx.value("calibration")["clips"]),
                      frames=len(feeds["early"]), bf16_nodes=sum(len(v) for v in in_bf16.values()))


@step("ep_config", "EP config and session code")
def step_ep_config(ctx: ExportContext, run: StepRun) -> None:
    ep = ep_options(ctx.target.ruleset.data["ep"], recipe_precision(ctx.target).name)
    config = vitisai_config(ep)
    if config is not None:
        ctx.bundle.write_json("vitisai_config", "ep/vitisai_config.json", config)
    elif "config_file" in ep["provider_options"]:
        run.record["vitisai_config"] = f"the board image's {ep['provider_options']['config_file']} ({ep['config_source']})"
    else:  # Ryzen AI's INT8 models: the NPU configuration is an xclbin of the installation, no config file
        run.record["vitisai_config"] = f"none: the provider options name the device ({ep['config_source']})"
    ctx.bundle.write("run_ep", "ep/run_ep.py", run_ep_script(ep, ctx.target.description))
    run.record.update(provider_options=dict(ep["provider_options"]), source=ep["config_source"])


@step("ep_compile", "EP compile")
def step_ep_compile(ctx: ExportContext, run: StepRun) -> None:
    """The EP compiles on the first session; without it (and its device) the step says so and what to run."""
    if EP not in ort.get_available_providers():
        run.not_run(f"this onnxruntime has no {EP} and there is no {ctx.target.board.get('name', 'device')} here: "
                    f"nothing was compiled; on the board run ep/run_ep.py (it compiles on first load, CPU fallback "
                    f"disabled)", script="ep/run_ep.py")
        ctx.fields["ep_compile"] = {"ran": False, "reason": run.record["reason"]}
        return
    spec = importlib.util.spec_from_file_location("run_ep", ctx.directory / "ep" / "run_ep.py")
    module = importlib.util.module_from_spec(spec)  # the bundle's own session code, as the board runs it
    spec.loader.exec_module(module)
    for graph in GRAPHS:
        module.session(graph)
    ctx.fields["ep_compile"] = {"ran": True}
    ctx.verdict.record("built", True, "the Vitis AI EP compiled both graphs with CPU fallback disabled")


def _precision_section(report: Report, quark: dict, compiled: dict) -> None:
    """The report's precision section: each form's logits against float and, for BF16, which nodes and why."""
    report.section("Precision").text(f"`quantizer.precision`: {quark['precision']}. Logits against the float graphs on "
                                     f"the {quark['vs_float_on']}:")
    report.table(["form", "logits SQNR (dB)", "top-1 agreement with float"],
                 [[name, "equal" if m["logits_sqnr_db"] is None else format(m["logits_sqnr_db"], ".2f"),
                   format(m["top1_agreement"], ".3f")] for name, m in quark["vs_float"].items()])
    for graph, nodes in quark["bf16_nodes"].items():
        how = quark["bf16_choice"].get(graph, {}).get("by")
        if how == "every node":
            report.text(f"The {graph} graph computes in BF16: {len(nodes)} nodes after a Cast to bfloat16.")
        elif nodes:
            report.text(f"BF16 nodes of the {graph} graph ({how}): " + ", ".join(f"`{n}` ({t})" for n, t in nodes.items()))
    if quark["precision"] != "int8" and not compiled.get("ran"):
        report.text("The EP compile did not run: the BF16 nodes' placement and numerics on the NPU are unverified; "
                    "the figures above are ONNX Runtime's CPU run of the Casts to bfloat16.")


@step("vaiep_report", "report")
def step_vaiep_report(ctx: ExportContext, run: StepRun) -> None:
    """report.md and report.html (the shared :class:`~vidconv_deploy.report.Report`, as every target writes)."""
    compliance = json.loads((ctx.directory / "compliance.json").read_text())
    quark = ctx.fields["quark"]
    compiled = ctx.fields.get("ep_compile", {"ran": False, "reason": "this recipe has no ep_compile step"})
    report = Report(f"{ctx.model.cfg.arch} on {ctx.target.name}")
    report.what_ran(ctx.bundle.steps, ctx.verdict.to_dict(), ctx.weights["source"])
    report.section("Target").text(ctx.target.description).text(
        f"Quantized by AMD Quark {quark['versions']['amd-quark']} with {quark['config']} (`quark/quark_config.json`).")
    _precision_section(report, quark, compiled)
    fallbacks = [(g, f) for g, r in compliance.items() for f in r["findings"]]
    fallbacks += [(f"{g} ({quark['precision']} graph)", f) for g, fs in quark.get("deployed_findings", {}).items() for f in fs]
    report.section("Nodes that would fall back to the CPU")
    if fallbacks:
        report.table(["graph", "node", "op", "severity", "why"],
                     [[g, f["node"], f["op_type"], f["severity"], f["message"]] for g, f in fallbacks])
    else:
        report.text("Every node maps to the device.")
    report.section("EP compile").text("compiled" if compiled["ran"] else f"Not run: {compiled['reason']}")
    accuracy = ctx.fields.get("accuracy")
    if accuracy:
        report.section("Accuracy (ONNX Runtime CPU)").table(
            ["form", "top-1", "agreement with float"],
            [[row["model"], format(row["top1"], ".3f"), format(row["agreement_with_float"], ".3f")] for row in accuracy])
    report.write(ctx.directory)
    (ctx.directory / "report_files").mkdir(exist_ok=True)
    ctx.bundle.record_report()
