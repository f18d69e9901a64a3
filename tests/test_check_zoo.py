"""The classic CNNs shipped inside the onnx package, with the verdicts Vitis AI users know.

Their weights are ConstantOfShape subgraphs (never materialised: shapes suffice for the rules).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import pytest

from vidconv_deploy.check import check_model

LIGHT = Path(onnx.__file__).parent / "backend/test/data/light"

# model -> (compliant, {(rule, op_type): count}, {device: (ops, subgraphs)}) on dpu-kv260
EXPECTED = {
    # ResNet50, VGG19, SqueezeNet, Inception-v2, DenseNet121: all compute on one DPU subgraph;
    # only the final Softmax runs on the board CPU (DenseNet ends at the pool).
    "resnet50": (True, {("dpu.cpu-op", "Softmax"): 1}, {"DPU": (175, 1), "CPU": (1, 1)}),
    "vgg19": (True, {("dpu.cpu-op", "Softmax"): 1}, {"DPU": (43, 1), "CPU": (1, 1)}),
    "squeezenet": (True, {("dpu.cpu-op", "Softmax"): 1}, {"DPU": (64, 1), "CPU": (1, 1)}),
    "inception_v2": (True, {("dpu.cpu-op", "Softmax"): 1}, {"DPU": (370, 1), "CPU": (1, 1)}),
    "densenet121": (True, {}, {"DPU": (668, 1)}),
    # LRN has no DPU engine and no board CPU kernel: each one cuts the DPU graph.
    "inception_v1": (False, {("dpu.unsupported-op", "LRN"): 2, ("dpu.cpu-op", "Softmax"): 1},
                     {"DPU": (139, 3), "CPU": (1, 1), "unsupported": (2, 2)}),
    "zfnet512": (False, {("dpu.unsupported-op", "LRN"): 2, ("dpu.cpu-op", "Softmax"): 1},
                 {"DPU": (19, 3), "CPU": (1, 1), "unsupported": (2, 2)}),
    # Caffe AlexNet also has group=2 convs: they and their ReLUs fall to the CPU.
    "bvlc_alexnet": (False, {("dpu.unsupported-op", "LRN"): 2, ("dpu.conv.group", "Conv"): 3,
                             ("dpu.activation.fusable", "Relu"): 3, ("dpu.cpu-op", "Softmax"): 1},
                     {"DPU": (13, 4), "CPU": (7, 3), "unsupported": (2, 2)}),
    # ShuffleNet v1: grouped 1x1 convs and channel shuffles (Reshape/Transpose) shred the graph.
    "shufflenet": (False, {("dpu.conv.group", "Conv"): 32, ("dpu.cpu-op", "Transpose"): 16,
                           ("dpu.reshape.placement", "Reshape"): 16, ("dpu.activation.fusable", "Relu"): 3,
                           ("dpu.cpu-op", "Softmax"): 1},
                   {"DPU": (135, 36), "CPU": (68, 49)}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_zoo_model_on_kv260(name: str) -> None:
    compliant, findings, devices = EXPECTED[name]
    result = check_model(LIGHT / f"light_{name}.onnx", "dpu-kv260")
    assert result.compliant is compliant
    assert Counter((f.rule, f.op_type) for f in result.findings) == findings
    assert {d: (v["ops"], v["subgraphs"]) for d, v in result.partition["devices"].items()} == devices


def test_resnet50_is_standard_onnx_but_not_finn_ready() -> None:
    assert check_model(LIGHT / "light_resnet50.onnx", "onnx").findings == []
    finn = check_model(LIGHT / "light_resnet50.onnx", "finn")
    # finn-plus's InferElementwiseBinaryOperation matches Add, not the Caffe2-era Sum; Softmax becomes
    # its HWSoftmax (an HLS layer on any part).
    assert Counter((f.op_type, f.rule) for f in finn.findings) == {
        ("Sum", "finn.not-dataflow"): 16, ("Reshape", "finn.shuffle"): 1, ("-", "finn.quantized"): 1}
