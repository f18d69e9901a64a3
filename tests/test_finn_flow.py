"""The finn-plus flow on a tiny FINN ViC: every layer mapped, the bit-exact chain, unmapped nodes, fit, folding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("finn", reason="finn-plus not installed (scripts/finn-install.sh)")

import brevitas.nn as qnn  # noqa: E402
from brevitas.export import export_qonnx  # noqa: E402
from brevitas.quant import Int8ActPerTensorFloat  # noqa: E402
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.custom_op.registry import getCustomOp  # noqa: E402

from vidconv_deploy.finn import flow  # noqa: E402
from vidconv_deploy.finn.boards import get_board  # noqa: E402
from vidconv_deploy.finn.chain import GraphForms, verify_chain  # noqa: E402
from vidconv_deploy.finn.finn_env import finn_session  # noqa: E402
from vidconv_deploy.finn.model import calibrate, from_float  # noqa: E402
from vidconv_deploy.finn.pipeline import export_qonnx as export_part  # noqa: E402
from vidconv_deploy.finn.report import finn_report  # noqa: E402
from vidconv_deploy.models.vidconv import build_model  # noqa: E402

TINY = {"dims": (8, 16, 16, 32), "depths": (1, 1, 1, 1), "neck_dim": 32}


def clips(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn((1, 9, 3, 64, 64), generator=gen) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A calibrated tiny FINN ViC taken through QONNX, streamlining and HW conversion (both graphs)."""
    torch.manual_seed(0)
    src = build_model("vic-nano-dpu", num_classes=4, layer_scale_init=1.0, **TINY).eval()
    model = calibrate(from_float(src, "w4a4"), clips(2), reestimate_bn=True)
    work = tmp_path_factory.mktemp("finn")
    forms, hosts = {}, {}
    with finn_session():
        for graph in ("early", "later"):
            qonnx = export_part(model, graph, work)
            streamlined, hosts[graph] = flow.streamline(flow.to_finn(qonnx))
            forms[graph] = GraphForms(qonnx, streamlined, flow.convert_to_hw(streamlined))
    return model, forms, hosts, work


def op_types(model):
    return {n.op_type for n in model.graph.node}


def test_every_node_becomes_a_hw_layer(tiny):
    _, forms, _, _ = tiny
    for graph in ("early", "later"):
        assert flow.unmapped_nodes(forms[graph].finn_hw) == []
        assert op_types(forms[graph].finn_streamlined) <= {"MultiThreshold", "MatMul", "Im2Col", "Add", "Resize",
                                                           "Reshape", "Transpose", "QuantAvgPool2d"}
    later = forms["later"].finn_hw
    assert {"VVAU", "MVAU", "ConvolutionInputGenerator", "UpsampleNearestNeighbour", "Shuffle", "ElementwiseAdd",
            "DuplicateStreams", "Pool", "Thresholding"} <= op_types(later)
    dilations = [getCustomOp(n).get_nodeattr("Dilation") for n in later.graph.node if n.op_type == "ConvolutionInputGenerator"]
    assert [4, 4] in dilations and [2, 2] in dilations  # the temporal conv (stage 3) and the neck/stage 4


def test_host_side_io(tiny):
    model, forms, hosts, _ = tiny
    early, later = hosts["early"], hosts["later"]
    assert early.input_ops == ["quantize (Brevitas input quantizer)", "NCHW -> NHWC"]
    assert early.input_datatype == "INT8" and later.input_datatype == "INT4" and later.output_datatype == "INT8"
    with torch.no_grad():
        features = model.early(clips(1)[0][0])
    assert early.output_scale == pytest.approx(features.scale.item(), rel=1e-6)
    shape = forms["later"].finn_hw.get_tensor_shape(forms["later"].finn_hw.graph.input[0].name)
    assert shape == [1, 12, 12, 16]  # the channels-last collage of 3x3 frames of 4x4x16


def test_bit_exact_chain(tiny):
    model, forms, _, _ = tiny
    with finn_session():
        result = verify_chain(model, forms["early"], forms["later"], clips(2, seed=5))
    assert result["bit_exact"], result["mismatches"]
    assert all(all(v.values()) for v in result["agree"].values())
    assert result["qonnx_max_off_grid"] < 1e-3


def test_chain_reports_a_broken_threshold(tiny):
    model, forms, _, _ = tiny
    broken = ModelWrapper(forms["later"].finn_streamlined.model.__deepcopy__())
    node = broken.get_nodes_by_op_type("MultiThreshold")[0]
    broken.set_initializer(node.input[1], broken.get_initializer(node.input[1]) + 3)
    later = dataclasses.replace(forms["later"], finn_streamlined=broken)
    with finn_session():
        result = verify_chain(model, forms["early"], later, clips(1))
    assert not result["bit_exact"] and not result["agree"]["finn_streamlined"]["logits"]
    assert result["agree"]["finn_hw"]["logits"] and result["agree"]["finn_streamlined"]["features"]
    assert "finn_streamlined logits" in result["mismatches"][0] and "integers differ" in result["mismatches"][0]


class MeanHead(torch.nn.Module):
    """conv -> QuantReLU -> spatial mean (ReduceMean) -> linear: the mean is deliberately not FINN-mappable."""

    def __init__(self):
        super().__init__()
        self.quant = qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, return_quant_tensor=True)
        self.conv = qnn.QuantConv2d(3, 8, 3, padding=1, weight_bit_width=4)
        self.relu = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
        self.fc = qnn.QuantLinear(8, 4, bias=True, weight_bit_width=4)
        self.out = qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, return_quant_tensor=True)

    def forward(self, x):
        y = self.relu(self.conv(self.quant(x)))
        return self.out(self.fc(getattr(y, "value", y).mean(dim=(2, 3))))


def test_unmapped_nodes_are_named_with_the_reason(tmp_path):
    net = MeanHead().train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(2, 3, 8, 8))
    export_qonnx(net.eval(), torch.randn(1, 3, 8, 8), export_path=str(tmp_path / "mean.onnx"))
    with finn_session():
        streamlined, _ = flow.streamline(flow.to_finn(ModelWrapper(str(tmp_path / "mean.onnx"))))
        unmapped = flow.unmapped_nodes(flow.convert_to_hw(streamlined))
    by_op = {u["op_type"]: u for u in unmapped}
    assert "ReduceMean" in by_op and "TruncAvgPool2d" in by_op["ReduceMean"]["why"]
    assert "FLOAT32" in by_op["ReduceMean"]["why"] and by_op["ReduceMean"]["node"].startswith("ReduceMean")
    report = finn_report(get_board("kv260"), "w4a4", 9, flow.CLK_NS, {"later": unmapped}, None, {})
    assert not report["fits"] and report["fps"] is None
    assert {u["graph"] for u in report["unmapped_nodes"]} == {"later"}


@pytest.fixture(scope="module")
def dataflow(tiny):
    _, forms, _, work = tiny
    board = get_board("kv260")
    out = {}
    with finn_session():
        for fps, name in ((None, "folded"), (2000.0, "fast")):
            estimates = {}
            for graph in ("early", "later"):
                frames = 9 if graph == "early" else 1
                cycles = flow.target_cycles(None if fps is None else fps * frames)
                df = flow.specialize_and_fold(forms[graph].finn_hw, board.part, cycles, work / f"{name}_{graph}")
                estimates[graph] = flow.estimate(df.model, board.part)
            out[name] = (estimates, df)
    return out


def test_specialized_for_the_part_and_folding_config(dataflow):
    _, df = dataflow["folded"]
    assert all(n.op_type.endswith(("_hls", "_rtl")) for n in df.model.graph.node)
    assert {"InnerShuffle_hls", "OuterShuffle_hls"} & op_types(df.model) or "Shuffle" not in op_types(df.model)
    mvaus = [cfg for name, cfg in df.folding.items() if name.startswith("MVAU")]
    assert mvaus and all(cfg["PE"] == 1 and cfg["SIMD"] == 1 for cfg in mvaus)


def test_fit_verdict_flips_when_the_budget_is_too_small(dataflow):
    estimates, _ = dataflow["folded"]
    board = get_board("kv260")
    report = finn_report(board, "w4a4", 9, flow.CLK_NS, {}, estimates, {})
    assert report["fits"] and 0 < report["utilization"]["LUT"] < 1
    assert report["resources"]["LUT"] == estimates["early"]["resources"]["LUT"] + estimates["later"]["resources"]["LUT"]
    assert report["resources"]["FF"] is None  # finn-plus's analytical estimators give no FF count
    small = dataclasses.replace(board, budget={**board.budget, "LUT": int(report["resources"]["LUT"]) - 1})
    shrunk = finn_report(small, "w4a4", 9, flow.CLK_NS, {}, estimates, {})
    assert not shrunk["fits"] and shrunk["utilization"]["LUT"] > 1


def test_clip_fps_and_latency_combine_the_two_graphs(dataflow):
    estimates, _ = dataflow["folded"]
    early, later = estimates["early"], estimates["later"]
    report = finn_report(get_board("kv260"), "w4a4", 9, flow.CLK_NS, {}, estimates, {})
    assert report["fps"] == pytest.approx(min(early["fps"] / 9, later["fps"]))
    cycles = early["critical_path_cycles"] + 8 * early["max_cycles"] + later["critical_path_cycles"]
    assert report["latency_ms"] == pytest.approx(cycles * 10.0 / 1e6)
    assert early["fps"] == pytest.approx(1e9 / 10.0 / early["max_cycles"])


def test_folding_to_a_target_fps(dataflow):
    """2000 clips/s: the early graph must reach 18000 frames/s, the later 2000 collages/s, at a LUT cost."""
    folded, _ = dataflow["folded"]
    fast, _ = dataflow["fast"]
    for graph, frames in (("early", 9), ("later", 1)):
        assert folded[graph]["fps"] < 2000.0 * frames <= fast[graph]["fps"]
        assert fast[graph]["resources"]["LUT"] > folded[graph]["resources"]["LUT"]
    report = finn_report(get_board("kv260"), "w4a4", 9, flow.CLK_NS, {}, fast, {})
    assert report["fps"] >= 2000.0 and np.isfinite(report["latency_ms"])


def test_large_weight_memories_go_to_uram_widened(tiny, dataflow):
    """With every MVAU of >= 1 BRAM_18K sent to UltraRAM: BRAM falls, URAM is used, the moved layers read
    wider words (SIMD * PE * weight bits <= 36) and the folding config carries ram_style and the write port."""
    _, forms, _, work = tiny
    board = get_board("kv260")
    folded, _ = dataflow["folded"]
    with finn_session():
        df = flow.specialize_and_fold(forms["later"].finn_hw, board.part, flow.target_cycles(None), work / "uram",
                                      uram_min_bram=1)
        moved = flow.estimate(df.model, board.part)
    assert moved["resources"]["BRAM_18K"] < folded["later"]["resources"]["BRAM_18K"] and moved["resources"]["URAM"] > 0
    ultra = {name: cfg for name, cfg in df.folding.items() if cfg.get("ram_style") == "ultra"}
    assert ultra and all(cfg["runtime_writeable_weights"] == 1 and cfg["SIMD"] * cfg["PE"] * 4 <= 36 for cfg in ultra.values())
    assert any(cfg["SIMD"] > 1 for cfg in ultra.values())
    assert sum("to URAM" in note for note in df.notes) == len(ultra)
