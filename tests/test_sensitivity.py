"""Sensitivity analysis of the INT8 streaming split (vidconv_deploy.evaluate.sensitivity, issue 17).

A tiny split (early: two convs per frame; later: conv, average pool, linear on a 2x2 collage) is
quantized with the DPU quantizer; the switch graphs must reproduce the QDQ graph and the float graph,
and a tensor pinned to a fix position far too low must rank first. The export step is checked on the
shared small vic-nano-dpu bundle.
"""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vidconv_deploy.evaluate.sensitivity import sensitivity, switch_graph, units
from vidconv_deploy.onnx_session import ort_session
from vidconv_deploy.quant import quantize_onnx
from vidconv_deploy.runners import collage

GRID = (2, 2)
BROKEN = "early_relu1"  # the first ReLU's output: pinned to fix point -2 (steps of 4 for values below 2)


def _conv(name: str, x: str, cin: int, cout: int, k: int, rng: np.random.Generator) -> tuple[list, list]:
    w = numpy_helper.from_array((rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32), f"{name}.w")
    b = numpy_helper.from_array((0.1 * rng.standard_normal(cout)).astype(np.float32), f"{name}.b")
    return [helper.make_node("Conv", [x, w.name, b.name], [name], name=f"{name}/Conv", pads=[k // 2] * 4)], [w, b]


def _model(nodes: list, inits: list, inp: tuple[str, list[int]], out: tuple[str, list[int]]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(inp[0], TensorProto.FLOAT, inp[1])],
                              [helper.make_tensor_value_info(out[0], TensorProto.FLOAT, out[1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _split() -> dict[str, onnx.ModelProto]:
    rng = np.random.default_rng(3)
    c1, i1 = _conv("early_conv1", "frame", 3, 8, 3, rng)
    c2, i2 = _conv("early_conv2", "early_relu1", 8, 8, 1, rng)
    early = _model(c1 + [helper.make_node("Relu", ["early_conv1"], ["early_relu1"], name="relu1")] + c2
                   + [helper.make_node("Relu", ["early_conv2"], ["features"], name="relu2")],
                   i1 + i2, ("frame", [1, 3, 6, 6]), ("features", [1, 8, 6, 6]))
    c3, i3 = _conv("later_conv", "collage", 8, 8, 3, rng)
    head_w = numpy_helper.from_array((rng.standard_normal((5, 8)) / 3).astype(np.float32), "head.w")
    head_b = numpy_helper.from_array(np.zeros(5, np.float32), "head.b")
    later = _model(c3 + [helper.make_node("Relu", ["later_conv"], ["later_relu"], name="relu3"),
                         helper.make_node("GlobalAveragePool", ["later_relu"], ["pooled"], name="pool"),
                         helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
                         helper.make_node("Gemm", ["flat", "head.w", "head.b"], ["logits"], name="head", transB=1)],
                   i3 + [head_w, head_b], ("collage", [1, 8, 12, 12]), ("logits", [1, 5]))
    return {"early": early, "later": later}


def _clips(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    return [rng.standard_normal((GRID[0] * GRID[1], 3, 6, 6)).astype(np.float32) for _ in range(n)]


def _quantize(graphs: dict[str, onnx.ModelProto], clips: list[np.ndarray], pins: dict[str, int] | None = None):
    frames = [{"frame": f[None]} for clip in clips for f in clip]
    early = quantize_onnx(graphs["early"], frames, fixed_fix_points=pins)
    early_session = ort_session(graphs["early"])
    collages = [{"collage": collage([early_session.run(None, {"frame": f[None]})[0] for f in clip], GRID)} for clip in clips]
    features_fp = early.info["output"]["relu2"][0][1]
    later = quantize_onnx(graphs["later"], collages, fixed_fix_points={"collage": features_fp})
    return {"early": early, "later": later}


@pytest.fixture(scope="module")
def split():
    graphs = _split()
    return graphs, _quantize(graphs, _clips(4))


def test_switch_graph_is_the_qdq_graph_with_every_switch_on_and_the_float_graph_with_every_switch_off(split):
    graphs, quant = split
    feeds = {"early": _clips(1)[0][:1], "later": np.random.default_rng(5).random((1, 8, 12, 12), dtype=np.float32)}
    for g in ("early", "later"):
        model, switches = switch_graph(graphs[g], quant[g], g)
        session, name = ort_session(model), graphs[g].graph.input[0].name
        on = session.run(None, {name: feeds[g], **{s.input: s.feed(True) for s in switches}})[0]
        off = session.run(None, {name: feeds[g], **{s.input: s.feed(False) for s in switches}})[0]
        np.testing.assert_array_equal(on, ort_session(quant[g].model).run(None, {name: feeds[g]})[0])
        np.testing.assert_allclose(off, ort_session(graphs[g]).run(None, {name: feeds[g]})[0], rtol=1e-5, atol=1e-6)
    early, later = (switch_graph(graphs[g], quant[g], g)[1] for g in ("early", "later"))
    assert [(s.name, s.kind) for s in early] == [
        ("early_conv1.w", "weight"), ("early_conv1.b", "bias"), ("early_conv2.w", "weight"), ("early_conv2.b", "bias"),
        ("frame", "input"), ("early_relu1", "activation"), ("features", "activation")]
    assert [(s.name, s.kind) for s in later] == [
        ("later_conv.w", "weight"), ("later_conv.b", "bias"), ("head.w", "weight"), ("head.b", "bias"),
        ("collage", "input"), ("later_relu", "activation"), ("pool", "approximation"), ("pooled", "activation"),
        ("logits", "activation")]
    found = units(early, later, "features", "collage")
    assert len(found) == len(early) + len(later) - 1  # the collage is the early output's codes
    assert [s.name for s in next(u for u in found if u.first.name == "features").switches] == ["features", "collage"]


def test_a_tensor_pinned_far_too_low_ranks_first():
    graphs = _split()
    clips = _clips(4)
    quant = _quantize(graphs, clips, pins={BROKEN: -2})
    assert quant["early"].info["output"]["relu1"] == [[8, -2]]
    result = sensitivity(graphs, quant, GRID, clips, labels=[0, 1, 2, 3])
    ranked = result.ranked
    assert (ranked[0].graph, ranked[0].tensor, ranked[0].kind, ranked[0].fix_point) == ("early", BROKEN, "activation", -2)
    # it alone costs more than every other tensor alone, and leaving it float wins back the most
    assert ranked[0].alone.sqnr_db < ranked[1].alone.sqnr_db - 10
    assert max(result.tensors, key=lambda t: t.recovery_db(result.int8)).tensor == BROKEN
    assert ranked[0].alone.sqnr_db < result.int8.sqnr_db + 1
    record = result.to_dict()
    assert record["clips"] == 4 and record["labelled"] is True and record["ranked"][0]["tensor"] == BROKEN
    assert len(record["ranked"]) == 15


def test_the_default_recipe_leaves_the_step_off(dpu_bundle):
    manifest = json.loads((dpu_bundle / "manifest.json").read_text())
    step = next(s for s in manifest["steps"] if s["name"] == "sensitivity")
    assert step == {"name": "sensitivity", "status": "not run",
                    "reason": "the recipe's sensitivity.clips is 0: give 1 or more to run it"}
    assert "sensitivity" not in manifest and "Sensitivity" not in (dpu_bundle / "report.md").read_text()


@pytest.fixture(scope="module")
def sensitivity_bundle(tmp_path_factory, tiny_dataset, monkeypatch_module):
    """A small vic-nano-dpu bundle from a recipe that turns the step on (2 calibration clips, 3 wanted)."""
    from vidconv_deploy.cli.export import main as export_main

    recipes = tmp_path_factory.mktemp("recipes")
    (recipes / "dpu-kv260-sensitivity.yaml").write_text("_base_: dpu-kv260\nsensitivity: {clips: 3}\n")
    monkeypatch_module.setenv("VIDCONV_RECIPES", str(recipes))
    out = tmp_path_factory.mktemp("sensitivity-bundle")
    assert export_main(["--target", "dpu-kv260-sensitivity", "--arch", "vic-nano-dpu", "--classes", "10", "--image-size",
                        "32", "--calib-clips", "2", "--calib", str(tiny_dataset), "--out", str(out)]) == 0
    return out / "vic-nano-dpu-dpu-kv260-sensitivity"


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_export_records_sensitivity_in_the_manifest_and_the_report(sensitivity_bundle):
    bundle = sensitivity_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    step = next(s for s in manifest["steps"] if s["name"] == "sensitivity")
    infos = {g: json.loads((bundle / "quant" / f"{g}_quant_info.json").read_text()) for g in ("early", "later")}
    expected = sum(len(i["param"]) + len(i["output"]) + len(i["onnx"]["approximations"]) for i in infos.values()) - 1
    assert step["status"] == "ran" and step["clips"] == 2 and step["tensors"] == expected
    sens = manifest["sensitivity"]
    assert sens["source"] == "the first 2 calibration clips" and sens["labelled"] is False
    assert len(sens["ranked"]) == expected and step["most_sensitive"] == f"{sens['ranked'][0]['graph']}:{sens['ranked'][0]['tensor']}"
    alone = [math.inf if t["alone"]["sqnr_db"] is None else t["alone"]["sqnr_db"] for t in sens["ranked"]]  # null: no error
    assert alone == sorted(alone)
    assert [a["tensor"] for a in sens["advice"]] == [t["tensor"] for t in sens["ranked"][:3]]
    assert (bundle / "report_files" / "sensitivity.png").stat().st_size > 10_000
    report = (bundle / "report.md").read_text()
    assert "## Sensitivity: which tensors cost the accuracy" in report
    assert f"| 1 | {sens['ranked'][0]['graph']} | {sens['ranked'][0]['tensor']} |" in report
