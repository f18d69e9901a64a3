"""``vidconv-check --target finn`` on the graphs the FINN flow writes, and the one op list the checker
and :mod:`vidconv_deploy.finn.flow` share (issue 11: they disagreed on Reshape, LayerNorm and GELU)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from check_graphs import G
from onnx import helper

pytest.importorskip("finn", reason="finn-plus not installed (scripts/finn-install.sh)")

import brevitas.nn as qnn  # noqa: E402
from brevitas.export import export_qonnx  # noqa: E402
from brevitas.quant import Int8ActPerTensorFloat  # noqa: E402
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402

from vidconv_deploy.check import check_model  # noqa: E402
from vidconv_deploy.check.finn import check_finn, converters  # noqa: E402
from vidconv_deploy.check.graph import load_graph  # noqa: E402
from vidconv_deploy.check.ops import build_ops  # noqa: E402
from vidconv_deploy.check.ruleset import RuleSet, load_ruleset  # noqa: E402
from vidconv_deploy.cli.check import main  # noqa: E402
from vidconv_deploy.errors import UserError  # noqa: E402
from vidconv_deploy.finn import flow  # noqa: E402
from vidconv_deploy.finn.finn_env import finn_session  # noqa: E402

KV260_PART = "xck26-sfvc784-2LV-c"
QONNX = "qonnx.custom_op.general"


class TinyNet(torch.nn.Module):
    """Input quantizer -> 3x3 conv -> QuantReLU -> 1x1 conv -> QuantReLU: every node maps to a HW layer."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, return_quant_tensor=True)
        self.conv1 = qnn.QuantConv2d(3, 8, 3, padding=1, weight_bit_width=4)
        self.relu1 = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
        self.conv2 = qnn.QuantConv2d(8, 8, 1, weight_bit_width=4)
        self.relu2 = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu2(self.conv2(self.relu1(self.conv1(self.quant(x)))))


@pytest.fixture(scope="module")
def finn_graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three graphs a FINN export writes (qonnx_*, finn_streamlined_*, finn_dataflow_*), of a tiny net."""
    out = tmp_path_factory.mktemp("finn_graphs")
    torch.manual_seed(0)
    net = TinyNet().train()
    with torch.no_grad():
        for _ in range(3):  # calibrate the activation quantizers
            net(torch.randn(2, 3, 8, 8))
    paths = {name: out / f"{name}.onnx" for name in ("qonnx", "finn_streamlined", "finn_dataflow")}
    export_qonnx(net.eval(), torch.randn(1, 3, 8, 8), export_path=str(paths["qonnx"]))
    with finn_session():
        streamlined, _ = flow.streamline(flow.to_finn(ModelWrapper(str(paths["qonnx"]))))
        streamlined.save(str(paths["finn_streamlined"]))
        dataflow = flow.specialize_and_fold(flow.convert_to_hw(streamlined), KV260_PART, flow.FULLY_FOLDED, out / "work")
        dataflow.model.save(str(paths["finn_dataflow"]))
    return paths


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("graph", "domains", "ops"),
    [
        ("qonnx", {"", QONNX}, 7),  # 2 Conv, 2 Relu and their 3 activation Quants (weight Quants are constants)
        ("finn_streamlined", {"", QONNX}, 5),  # Im2Col, 2 MatMul, 2 MultiThreshold
        ("finn_dataflow", {"finn.custom_op.fpgadataflow.hls", "finn.custom_op.fpgadataflow.rtl"}, 4),
    ],
)
def test_finn_flow_graphs_are_compliant(finn_graphs: dict[str, Path], capsys: pytest.CaptureFixture[str], graph: str,
                                        domains: set[str], ops: int) -> None:
    path = finn_graphs[graph]
    assert {n.domain for n in onnx.load(str(path)).graph.node} == domains
    code, out, err = run([str(path), "--target", "finn", "--json"], capsys)
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["compliant"] is True and doc["findings"] == []  # QONNX quantizers are FINN's input, not findings
    assert doc["partition"]["devices"] == {"FPGA": {"ops": ops, "subgraphs": 1}}


def test_dataflow_graph_counts_its_hw_layers(finn_graphs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run([str(finn_graphs["finn_dataflow"]), "--target", "finn"], capsys)
    assert code == 0
    assert "partition: FPGA: 4 ops in 1 subgraph(s)" in out and "finn: compliant" in out


def test_qonnx_graph_on_a_non_finn_rule_set_points_at_finn(finn_graphs: dict[str, Path]) -> None:
    with pytest.raises(UserError, match=r"^node '[^']+' \(Quant\) uses unknown op domain 'qonnx.custom_op.general': "
                                        r"it is a QONNX/FINN op: check the model with --target finn$"):
        check_model(finn_graphs["qonnx"], "onnx")


def qonnx_with_unmappable_ops() -> onnx.ModelProto:
    """Quant -> Conv -> FloatQuant (a QONNX op FINN does not convert) -> LRN (no HW layer) -> Sigmoid (Versal only)."""
    g = G([1, 8, 8, 8])
    scale, zero = g.const(np.float32(0.1)), g.const(np.float32(0))
    q = g.op("Quant", ["x", scale, zero, g.const(np.float32(4))], domain=QONNX, signed=1, narrow=0, rounding_mode="ROUND")
    fq = g.op("FloatQuant", [g.conv(q, 8, 8, (1, 1)), scale, g.const(np.float32(4)), g.const(np.float32(3)), g.const(np.float32(7))],
              domain=QONNX)
    model = g.model(g.op("Sigmoid", [g.op("LRN", [fq], size=3)]))
    model.opset_import.append(helper.make_opsetid(QONNX, 1))
    return model


def test_ops_finn_cannot_map_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "q.onnx"
    onnx.save(qonnx_with_unmappable_ops(), str(path))
    code, out, _ = run([str(path), "--target", "finn", "--json"], capsys)
    assert code == 1
    findings = {f["op_type"]: (f["rule"], f["message"]) for f in json.loads(out)["findings"]}
    assert findings == {
        "FloatQuant": ("finn.unknown-custom-op", "FloatQuant (domain 'qonnx.custom_op.general') is neither a QONNX quantizer nor an op FINN converts"),
        "LRN": ("finn.not-dataflow", "LRN has no FINN HW layer; it stays outside the dataflow partition"),
        "Sigmoid": ("finn.not-dataflow", "Sigmoid has a FINN HW layer (InferPWPolyFLayer) only on Versal parts, and finn is not one"),
    }


# -- one op list for the checker and the flow (issue 11) ------------------------------------------

def finn_rules(part: str | None = None) -> RuleSet:
    data = load_ruleset("finn").data
    return RuleSet("finn", data if part is None else {**data, "board": {"part": part}})


def test_flow_converts_with_the_rule_sets_list() -> None:
    steps = load_ruleset("finn").data["convert_to_hw"]["steps"]
    assert [(ops, type(t).__name__) for ops, t in flow._TO_HW] == [(tuple(s["ops"]), s["transformation"]) for s in steps]
    assert set(converters(finn_rules())) == {op for ops, _ in flow._TO_HW for op in ops}


def builder_convert_to_hw() -> tuple[str, list[tuple[tuple[str, ...], str]]]:
    """finn-plus's step_convert_to_hw source and its (op types, transformation) calls with the default config."""
    source = Path(importlib.util.find_spec("finn.builder.build_dataflow_steps").origin).read_text(encoding="utf-8")
    body = source[source.index("def step_convert_to_hw"):]
    body = body[:body.index("\n@register_build_dataflow_step")]
    default = body[body.index("standalone_thresholds are set to False"):]  # the builder's default branch on
    calls = re.findall(r"apply_if_relevant\(\s*model,\s*\[([^\]]*)\],\s*(\w+)\(", default)
    return body, [(tuple(re.findall(r'"(\w+)"', ops)), name) for ops, name in calls]


def test_the_list_is_finn_plus_builders_with_the_documented_deviations() -> None:
    data = load_ruleset("finn").data["convert_to_hw"]
    body, builder = builder_convert_to_hw()
    # run after the list (flow.convert_to_hw) or not a conversion: finn.yaml says which and why
    converting = [(ops, name) for ops, name in builder if name not in ("InferShuffle", "AbsorbElementwiseOpsIntoRequant")]
    ours = [(tuple(op for op in s["ops"] if (s["transformation"], op) != ("InferUpsample", "Resize")), s["transformation"])
            for s in data["steps"]]
    assert ours == converting
    assert set(data["skipped"]) == {"InferReshape"} and "InferReshape()" in body


def test_reshape_layernorm_and_gelu_as_the_flow_maps_them() -> None:
    """Issue 11: finn.yaml called Reshape a HW op and LayerNorm/GELU unmappable; finn-plus (and the flow) say otherwise."""
    converted = {op: type(t).__name__ for ops, t in flow._TO_HW for op in ops}
    assert "Reshape" not in converted  # InferReshape is not run
    assert (converted["LayerNormalization"], converted["Gelu"]) == ("InferLayerNorm", "InferPWPolyFLayer")

    g = G([1, 8, 4, 4])
    q = g.op("Quant", ["x", g.const(np.float32(0.1)), g.const(np.float32(0)), g.const(np.float32(4))], domain=QONNX,
             signed=1, narrow=0, rounding_mode="ROUND")
    t = g.op("Transpose", [q], perm=[0, 2, 3, 1])
    ln = g.op("LayerNormalization", [t, g.const(np.ones(8, np.float32)), g.const(np.zeros(8, np.float32))], axis=-1)
    gelu = g.op("Gelu", [ln])
    model = g.model(g.op("Reshape", [gelu, g.const(np.array([1, 128], np.int64))]))
    model.opset_import[0].version = 20
    model.opset_import.append(helper.make_opsetid(QONNX, 1))
    graph = load_graph(model, frozenset(finn_rules().data["extra_domains"]))
    ops = build_ops(graph)

    by_type = {op.op_type: op.name for op in ops}

    zynq_devices, zynq = check_finn(graph, ops, finn_rules())
    assert sorted((f.op_type, f.rule, f.severity) for f in zynq) == [
        ("Gelu", "finn.not-dataflow", "error"), ("Reshape", "finn.shuffle", "warning"), ("Transpose", "finn.shuffle", "warning")]
    assert (zynq_devices[by_type["LayerNormalization"]], zynq_devices[by_type["Gelu"]]) == ("FPGA", "CPU")
    versal_devices, versal = check_finn(graph, ops, finn_rules("xcvc1902-vsva2197-2MP-e-S"))
    assert [f for f in versal if f.severity == "error"] == [] and versal_devices[by_type["Gelu"]] == "FPGA"


def test_layernorm_with_scale_and_bias_is_left_unconverted() -> None:
    g = G([1, 4, 4, 8])
    ln = g.op("LayerNormalization", ["x", g.const(np.full(8, 2, np.float32)), g.const(np.zeros(8, np.float32))], axis=-1)
    result = check_model(g.model(ln), "finn")
    assert [(f.op_type, f.rule) for f in result.errors] == [("LayerNormalization", "finn.layernorm.affine")]
    assert "ExtractNormScaleBias" in result.errors[0].fix


def test_decomposed_layernorm_and_gelu() -> None:
    g = G([1, 4, 4, 8])
    model = g.model(g.gelu_decomposed(g.layernorm_decomposed("x", 8)))
    found = {(f.op_type, f.rule): f for f in check_model(model, "finn").errors}
    assert set(found) == {("LayerNorm", "finn.not-dataflow"), ("GELU", "finn.not-dataflow")}
    assert "one LayerNormalization node" in found[("LayerNorm", "finn.not-dataflow")].fix
    assert "only on Versal parts" in found[("GELU", "finn.not-dataflow")].message
