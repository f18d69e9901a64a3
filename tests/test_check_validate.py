"""``vidconv-check`` refuses broken models (exit 2, one line naming the problem) before any rule.

Each of these models was "compliant" (exit 0) on dpu-kv260 and finn before the checker validated
its input: the rules read kernels and channels of a graph no runtime would load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from check_graphs import G
from onnx import helper

from vidconv_deploy.check import check_model
from vidconv_deploy.cli.check import main
from vidconv_deploy.errors import UserError

TARGETS = ["dpu-kv260", "finn"]


def weight(g: G, shape: tuple[int, ...]) -> str:
    return g.const(np.ones(shape, np.float32))


def wrong_attribute_type() -> onnx.ModelProto:
    g = G([1, 8, 8, 8])
    return g.model(g.op("Conv", ["x", weight(g, (8, 8, 3, 3))], pads=[1.0, 1.0, 1.0, 1.0]))


def rank_mismatch() -> onnx.ModelProto:
    g = G([1, 8, 8])
    return g.model(g.op("Conv", ["x", weight(g, (8, 8, 3, 3))]))


def channel_mismatch() -> onnx.ModelProto:
    g = G([1, 4, 8, 8])
    return g.model(g.op("Conv", ["x", weight(g, (8, 8, 3, 3))]))


def pool_pad_as_large_as_kernel() -> onnx.ModelProto:
    """Valid for the ONNX checker and shape inference; ONNX Runtime's pool kernel refuses it."""
    g = G([1, 8, 8, 8])
    return g.model(g.op("MaxPool", ["x"], kernel_shape=[3, 3], pads=[0, 3, 0, 0]))


def duplicate_output_in_a_qonnx_graph() -> onnx.ModelProto:
    """A QONNX graph (no ONNX Runtime check) that is not in SSA form: the checker still sees it."""
    g = G([1, 8, 4, 4])
    q = g.op("Quant", ["x", g.const(np.float32(0.1)), g.const(np.float32(0)), g.const(np.float32(4))],
             domain="qonnx.custom_op.general", signed=1, narrow=0, rounding_mode="ROUND")
    g.nodes.append(helper.make_node("Relu", ["x"], [q], name="dup"))
    model = g.model(q)
    model.opset_import.append(helper.make_opsetid("qonnx.custom_op.general", 1))
    return model


def conv_with_external_weight(folder: Path) -> Path:
    """A compliant conv whose weight lives in ``folder/m.bin``."""
    g = G([1, 8, 8, 8])
    model = g.model(g.op("Relu", [g.op("Conv", ["x", weight(g, (8, 8, 3, 3))], pads=[1, 1, 1, 1])]))
    path = folder / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="m.bin", size_threshold=0)
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (wrong_attribute_type, "the ONNX checker rejects it (Mismatched attribute type in 'conv2 : pads'. "
                               "Expected: 'INTS', actual: 'FLOATS')"),
        (rank_mismatch, "shape inference fails (node 'conv2' (Conv): Number of spatial dimensions in the weight tensor (2) "
                        "does not match the number of spatial dimensions in the input tensor (1))"),
        (channel_mismatch, "node 'conv2' (Conv) reads 4 channels from 'x', but its weight 'c1' of shape [8, 8, 3, 3] "
                           "expects 8 (8 x group 1)"),
        (pool_pad_as_large_as_kernel, "ONNX Runtime cannot load it (Pad should be smaller than kernel.)"),
    ],
    ids=["attribute-type", "rank", "channels", "runtime"],
)
def test_broken_model_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], make, problem: str, target: str) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(make(), str(path))
    code, out, err = run([str(path), "--target", target], capsys)
    assert (code, out) == (2, "")
    assert err == f"vidconv-check: error: {path}: {problem}: re-export the model\n"


def test_custom_domain_graph_still_gets_the_onnx_checker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "q.onnx"
    onnx.save(duplicate_output_in_a_qonnx_graph(), str(path))
    code, out, err = run([str(path), "--target", "finn"], capsys)
    assert (code, out) == (2, "")
    assert err == (f"vidconv-check: error: {path}: the ONNX checker rejects it (Graph must be in single static assignment (SSA) "
                   "form, however 'quant4' has been used as output names multiple times.): re-export the model\n")


@pytest.mark.parametrize(("target", "warnings"), [("dpu-kv260", []), ("finn", ["finn.quantized"])])
def test_external_data_is_read_next_to_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str,
                                                 warnings: list[str]) -> None:
    path = conv_with_external_weight(tmp_path)
    code, out, err = run([str(path), "--target", target, "--json"], capsys)
    assert (code, err) == (0, "")
    assert [f["rule"] for f in json.loads(out)["findings"]] == warnings


@pytest.mark.parametrize("target", TARGETS)
def test_missing_external_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str) -> None:
    path = conv_with_external_weight(tmp_path)
    os.remove(tmp_path / "m.bin")
    code, out, err = run([str(path), "--target", target], capsys)
    assert (code, out) == (2, "")
    assert err == (f"vidconv-check: error: {path}: tensor 'c1' keeps its data in 'm.bin', which is missing: "
                   "copy 'm.bin' next to the model, or save the model with its data inside\n")


def test_truncated_external_data_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = conv_with_external_weight(tmp_path)
    (tmp_path / "m.bin").write_bytes(b"\0" * 100)
    code, out, err = run([str(path), "--target", "dpu-kv260"], capsys)
    assert (code, out) == (2, "")
    assert err == (f"vidconv-check: error: {path}: tensor 'c1' needs bytes up to 2304 of 'm.bin', which has 100: "
                   "the data file is truncated or belongs to another model; save the model again\n")


def test_in_memory_model_is_validated_too() -> None:
    with pytest.raises(UserError, match=r"^model: node 'conv2' \(Conv\) reads 4 channels from 'x'"):
        check_model(channel_mismatch(), "dpu-kv260")
