"""``vidconv-check`` from the outside: exit codes, one-line errors, JSON and JUnit output."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
import pytest
from check_graphs import G
from onnx import helper

from vidconv_deploy.check import check_model, list_targets
from vidconv_deploy.cli.check import main
from vidconv_deploy.errors import UserError

VIDCONV_CHECK = Path(sys.executable).parent / "vidconv-check"


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def good_model() -> onnx.ModelProto:
    g = G([1, 8, 8, 8])
    return g.model(g.op("Relu", [g.conv("x", 8, 8, pads=[1, 1, 1, 1])]))


def bad_model() -> onnx.ModelProto:
    g = G([1, 8, 8, 8])
    return g.model(g.op("LRN", [g.conv("x", 8, 8, (1, 1))], size=5))


def cyclic_model() -> onnx.ModelProto:
    g = G([1, 8, 4, 4])
    g.nodes += [helper.make_node("Add", ["x", "b"], ["a"], name="first"), helper.make_node("Relu", ["a"], ["b"], name="second")]
    return g.model("b")


def custom_domain_model() -> onnx.ModelProto:
    g = G([1, 8, 4, 4])
    model = g.model(g.op("Swish", ["x"], domain="com.acme"))
    model.opset_import.append(helper.make_opsetid("com.acme", 1))
    return model


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_list_targets() -> None:
    assert list_targets() == ["dpu-kv260", "dpu-vck190", "dpu-vek280", "dpu-zcu102", "dpu-zcu104", "finn", "finn-kv260",
                              "finn-pynq-z2", "finn-vck190", "finn-zcu104", "onnx", "vaiep-ryzen-ai", "vaiep-ve2-npu", "vaiep-vek280"]


def test_compliant_model_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run([str(save(good_model(), tmp_path / "m.onnx")), "--target", "dpu-zcu104"], capsys)
    assert code == 0
    assert "dpu-zcu104: compliant" in out and "DPU: 2 ops in 1 subgraph(s)" in out


def test_violations_exit_1_with_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run([str(save(bad_model(), tmp_path / "m.onnx")), "--target", "dpu-kv260", "--json"], capsys)
    assert code == 1
    doc = json.loads(out)
    assert doc["target"] == "dpu-kv260" and doc["compliant"] is False
    assert [{k: f[k] for k in ("node", "op_type", "rule")} for f in doc["findings"]] == [{"node": "lrn4", "op_type": "LRN", "rule": "dpu.unsupported-op"}]
    assert set(doc["findings"][0]) >= {"node", "op_type", "rule", "message", "fix", "source"}
    assert doc["partition"]["devices"] == {"DPU": {"ops": 1, "subgraphs": 1}, "unsupported": {"ops": 1, "subgraphs": 1}}


def test_junit_has_a_failure_per_violation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "ci" / "check.xml"
    code, _, _ = run([str(save(bad_model(), tmp_path / "m.onnx")), "--target", "dpu-kv260", "--junit", str(report)], capsys)
    assert code == 1
    suite = ET.parse(report).getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    failures = suite.findall("testcase/failure")
    assert [(f.get("type"), f.get("message")) for f in failures] == [("dpu.unsupported-op", "LRN has no DPU engine and no board CPU kernel")]


@pytest.mark.parametrize(
    ("make", "argv_target", "message"),
    [
        (None, "dpu-kv260", "{path}: no such file; pass the path of an .onnx model"),
        ("garbage", "dpu-kv260", "{path}: not an ONNX model (DecodeError); export it with torch.onnx.export"),
        (cyclic_model, "dpu-kv260", "graph has a cycle through node 'first': an ONNX graph must be acyclic; re-export the model"),
        (custom_domain_model, "dpu-kv260", "node 'swish1' (Swish) uses unknown op domain 'com.acme': export it with standard ONNX ops (domain ai.onnx)"),
        (good_model, "dpu-kv26", "unknown target 'dpu-kv26': did you mean dpu-kv260 or dpu-vek280 or finn-kv260?"),
    ],
    ids=["missing", "not-onnx", "cycle", "unknown-domain", "target-typo"],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], make, argv_target: str, message: str) -> None:
    path = tmp_path / "m.onnx"
    if make == "garbage":
        path.write_bytes(b"\x00\xffnot a protobuf at all\x12")
    elif make is not None:
        save(make(), path)
    code, out, err = run([str(path), "--target", argv_target], capsys)
    assert code == 2 and out == ""
    assert err == f"vidconv-check: error: {message.format(path=path)}\n"


def test_api_raises_user_error_on_bad_model() -> None:
    with pytest.raises(UserError, match="cycle through node 'first'"):
        check_model(cyclic_model(), "onnx")


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([str(VIDCONV_CHECK), str(tmp_path / "missing.onnx"), "--target", "dpu-kv260"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == f"vidconv-check: error: {tmp_path / 'missing.onnx'}: no such file; pass the path of an .onnx model\n"


def test_onnx_target_flags_dynamic_shapes_and_contrib_ops() -> None:
    g = G(["batch", 8, 4, 4])
    model = g.model(g.op("FastGelu", [g.op("Relu", ["x"])], domain="com.microsoft"))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    result = check_model(model, "onnx")
    # The helper's outputs carry no shape, which the ONNX checker rejects as well.
    assert sorted((f.node, f.rule) for f in result.findings) == [
        ("<graph>", "onnx.checker"), ("fastgelu2", "onnx.standard-domain"), ("relu1", "onnx.static-shape"), ("x", "onnx.static-shape")]
    assert result.partition["devices"] == {"ONNX": {"ops": 1, "subgraphs": 1}, "unsupported": {"ops": 1, "subgraphs": 1}}


def test_finn_rejects_sigmoid_and_accepts_quantized_convs() -> None:
    g = G([1, 8, 8, 8])
    q = g.op("QuantizeLinear", ["x", g.const(np.float32(0.1)), g.const(np.int8(0))])
    dq = g.op("DequantizeLinear", [q, g.const(np.float32(0.1)), g.const(np.int8(0))])
    result = check_model(g.model(g.op("Sigmoid", [g.op("Relu", [g.conv(dq, 8, 8, (1, 1))])])), "finn")
    assert [(f.op_type, f.rule, f.severity) for f in result.findings] == [("Sigmoid", "finn.not-dataflow", "error")]
    assert result.partition["devices"] == {"CPU": {"ops": 1, "subgraphs": 1}, "FPGA": {"ops": 4, "subgraphs": 1}}
