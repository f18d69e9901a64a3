"""The Vitis AI EP steps after the shared ones: both streaming graphs quantized by AMD Quark, the EP's
``vitisai_config.json`` and session code, the EP compile (where the EP is), accuracy and the report.

Quark calibrates on the same feeds as our own quantizer (every frame for the early graph, each
clip's host collage for the later one). Without the EP and its device the compile step writes
``ep/run_ep.py`` and records that it did not run; the QDQ graphs' accuracy is ONNX Runtime's CPU run.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import onnxruntime as ort

from vidconv_deploy.atomic import write_text
from vidconv_deploy.quark.env import versions
from vidconv_deploy.quark.ep import run_ep_script, vitisai_config
from vidconv_deploy.quark.quantize import quantize_with_quark
from vidconv_deploy.runners import GRAPHS, OnnxRuntimeRunner, StreamingSplit
from vidconv_deploy.targets.context import ExportContext, StepRun
from vidconv_deploy.targets.steps import step

EP = "VitisAIExecutionProvider"


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


@step("quark_quantize", "quantize (Quark)")
def step_quark_quantize(ctx: ExportContext, run: StepRun) -> None:
    """Both streaming graphs through Quark's config for this target (XINT8 or VINT8), excluded nodes left in float."""
    spec = ctx.target.ruleset.data["quark"]
    exclude = list(ctx.target.quantizer.get("nodes_to_exclude", []))
    feeds, graphs = ctx.value("quark_feeds"), ctx.value("graphs")
    results = {g: quantize_with_quark(graphs[g], feeds[g], spec["config"], exclude) for g in GRAPHS}
    ctx.set("quark", {g: r.model for g, r in results.items()})
    for g, r in results.items():
        ctx.bundle.write_onnx(f"quark_{g}_onnx", f"quark/{g}.onnx", r.model)
        write_text(ctx.directory / "quark" / f"{g}.log", r.log)
    config = {"config": spec["config"], "source": spec["source"], "nodes_to_exclude": exclude,
              "options": results["early"].options["extra_options"], "versions": versions()}
    ctx.bundle.write_json("quark_config", "quark/quark_config.json", config)
    ctx.fields["quark"] = {"config": spec["config"], "nodes_to_exclude": exclude, "versions": versions()}
    run.record.update(config=spec["config"], clips=len(ctx.value("calibration")["clips"]),
                      frames=len(feeds["early"]))


@step("ep_config", "EP config and session code")
def step_ep_config(ctx: ExportContext, run: StepRun) -> None:
    ep = ctx.target.ruleset.data["ep"]
    config = vitisai_config(ep)
    if config is not None:
        ctx.bundle.write_json("vitisai_config", "ep/vitisai_config.json", config)
    else:
        run.record["vitisai_config"] = f"the board image's {ep['provider_options']['config_file']} ({ep['config_source']})"
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


@step("vaiep_report", "report")
def step_vaiep_report(ctx: ExportContext, run: StepRun) -> None:
    compliance = json.loads((ctx.directory / "compliance.json").read_text())
    lines = [f"# {ctx.model.cfg.arch} on {ctx.target.name}", "", ctx.target.description, "",
             f"Quantized by AMD Quark {ctx.fields['quark']['versions']['amd-quark']} with "
             f"{ctx.fields['quark']['config']} (`quark/quark_config.json`).", "", "## Nodes that would fall back to the CPU", ""]
    fallbacks = [(g, f) for g, r in compliance.items() for f in r["findings"]]
    lines += [f"- {g}: `{f['node']}` ({f['op_type']}, {f['severity']}): {f['message']}" for g, f in fallbacks] or \
             ["Every node maps to the device."]
    compiled = ctx.fields.get("ep_compile", {"ran": False, "reason": "this recipe has no ep_compile step"})
    lines += ["", "## EP compile", "", "compiled" if compiled["ran"] else f"Not run: {compiled['reason']}"]
    accuracy = ctx.fields.get("accuracy")
    if accuracy:
        lines += ["", "## Accuracy (ONNX Runtime CPU)", "", "| form | top-1 | agreement with float |", "|---|---|---|"]
        lines += [f"| {row['model']} | {row['top1']:.3f} | {row['agreement_with_float']:.3f} |" for row in accuracy]
    text = "\n".join(lines) + "\n"
    write_text(ctx.directory / "report.md", text)
    write_text(ctx.directory / "report.html", "<pre>\n" + text.replace("&", "&amp;").replace("<", "&lt;") + "</pre>\n")
    (ctx.directory / "report_files").mkdir(exist_ok=True)
    ctx.bundle.record_report()
