"""The DPU a target assumes: fingerprints decoded as the target factory does, rules and lowering that follow
the configuration, a bundle that records it, and the compile/board checks that refuse another DPU."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vidconv_deploy.check import check_model
from vidconv_deploy.check.dpu_config import Bank, DpuChoice, decode_fingerprint, parse_fingerprint
from vidconv_deploy.check.ruleset import _resolve, load_ruleset
from vidconv_deploy.cli.check import main as check_main
from vidconv_deploy.cli.export import main as export_main
from vidconv_deploy.dpu.boards import dpu_board
from vidconv_deploy.dpu.compile import compile_script
from vidconv_deploy.errors import UserError
from vidconv_deploy.export.passes import SplitTemporalChannels
from vidconv_deploy.targets.registry import get_target

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hw" / "board"))
import run_xmodel  # noqa: E402

B3136_KRIA = 0x101000016010406  # kria-vitis-platforms issue 25: the Kria app overlays' DPU
B3136 = DpuChoice("dpu_arch", "B3136")


def test_the_kria_overlay_fingerprint_is_a_b3136_with_its_dpu_conf_settings():
    """dpu_conf.vh of the smartcam overlay: B3136, ALU parallel default (PP/2), conv ReLU+LeakyReLU+ReLU6,
    ALU ReLU+ReLU6, channel augmentation on; no save-engine argmax (feature bit 30)."""
    c = decode_fingerprint(B3136_KRIA)
    assert (c.name, c.size, c.pixel_parallel, c.channel_parallel, c.output_channel_parallel, c.alu_pixel_parallel) == (
        "DPUCZDX8G_ISA1_B3136", "B3136", 8, 14, 14, 4)
    assert (c.conv_bank, c.alu_bank) == (Bank(14, 14, 2048), Bank(14, 1, 2048))
    assert (c.conv_nonlinear, c.alu_nonlinear) == (("relu", "leaky_relu", "relu6"), ("relu", "relu6"))
    assert dict(c.features) == {"image_bank_groups": 2, "channel_augmentation": True, "conv_leaky_relu": True,
                                "alu_leaky_relu": False, "argmax": False}
    assert c.peak_ops_per_clock == 3136 and c.hex == "0x101000016010406"


@pytest.mark.parametrize("size, pp, icp", [("B512", 4, 8), ("B800", 4, 10), ("B1024", 8, 8), ("B1152", 4, 12),
                                           ("B1600", 8, 10), ("B2304", 8, 12), ("B3136", 8, 14), ("B4096", 8, 16)])
def test_every_pg338_size_decodes_from_its_target_factory_fingerprint(size, pp, icp):
    """PG338 "Architecture of the DPUCZDX8G": PP x ICP x OCP per size; the prototxt's ALU parallelism is PP/2."""
    entry = _resolve("dpuczdx8g")["dpu"]["configurations"][size]
    c = decode_fingerprint(parse_fingerprint(entry["fingerprint"]))
    assert (c.size, c.pixel_parallel, c.channel_parallel, c.output_channel_parallel, c.alu_pixel_parallel) == (
        size, pp, icp, icp, pp // 2)
    assert c.features["argmax"] and c.conv_bank == Bank(icp, icp, 2048)


def test_versal_configurations_decode_with_their_batch_and_banks():
    vck = decode_fingerprint(0x603000B56011831)   # DPUCVDX8G_ISA3_C32B3.prototxt
    assert (vck.name, vck.batch, vck.pixel_parallel, vck.channel_parallel, vck.output_channel_parallel,
            vck.alu_pixel_parallel, vck.conv_bank, vck.alu_bank) == (
        "DPUCVDX8G_ISA3_C32B3", 3, 8, 16, 32, 8, Bank(16, 16, 8192), Bank(16, 1, 8192))
    assert vck.conv_nonlinear == ("relu", "leaky_relu", "hsigmoid", "hswish", "relu6")
    vek = decode_fingerprint(0x901400044000E44)   # DPUCV2DX8G_ISA1_C20B14.prototxt
    assert (vek.name, vek.batch, vek.pixel_parallel, vek.channel_parallel, vek.output_channel_parallel,
            vek.alu_pixel_parallel, vek.conv_bank) == ("DPUCV2DX8G_ISA1_C20B14", 14, 4, 32, 32, 2, Bank(16, 4, 32768))


@pytest.mark.parametrize("value, message", [
    (0x100000016010406, "fingerprint 0x100000016010406 is a DPUCZDX8G ISA0 DPU, which this toolchain cannot decode "
                        "(it decodes DPUCZDX8G ISA1, DPUCVDX8G ISA3, DPUCV2DX8G ISA1): give the fingerprint of one of those"),
    (0x101000016010408, "fingerprint 0x101000016010408: ARCH 8 is not one the target factory knows (0-7 = B512, B800, "
                        "B1024, B1152, B1600, B2304, B3136, B4096): copy the fingerprint exactly as xdputil query prints it"),
    (0x201000000000000, "fingerprint 0x201000000000000 is a DPUCAHX8H ISA1 DPU, which this toolchain cannot decode "
                        "(it decodes DPUCZDX8G ISA1, DPUCVDX8G ISA3, DPUCV2DX8G ISA1): give the fingerprint of one of those"),
])
def test_what_cannot_be_decoded_is_refused(value, message):
    with pytest.raises(UserError) as err:
        decode_fingerprint(value)
    assert str(err.value) == message


def test_board_default_and_choices_set_the_rule_keys():
    kv260 = load_ruleset("dpu-kv260")
    assert (kv260.data["arch"]["name"], kv260.data["arch"]["fingerprint"], kv260.data["channel_parallel"]) == (
        "DPUCZDX8G_ISA1_B4096", "0x101000056010407", 16)
    b3136 = load_ruleset("dpu-kv260", B3136).data
    assert b3136["arch"]["fingerprint"] == "0x101000016010406"  # the KV260's own B3136, not the generic prototxt
    assert (b3136["channel_parallel"], b3136["engines"]["conv"]["output_channel_parallel"],
            b3136["engines"]["conv"]["weight_bank"], b3136["perf"]["alu_pixel_parallel"], b3136["board"]["cores"],
            b3136["board"]["clock_mhz"]) == (14, 14, {"width": 14, "num": 14, "depth": 2048}, 4, 1, 300)
    assert load_ruleset("dpu-zcu104", B3136).data["arch"]["fingerprint"] == "0x101000056010406"
    assert load_ruleset("dpu-kv260", DpuChoice("fingerprint", "0x101000016010407")).data["arch"]["features"]["argmax"] is False
    assert load_ruleset("dpu-vck190", DpuChoice("dpu_arch", "C64B5")).data["board"]["batch"] == 5


@pytest.mark.parametrize("target, choice, message", [
    ("dpu-kv260", DpuChoice("dpu_arch", "B2048"), "--dpu-arch B2048: dpu-kv260 knows B512, B800, B1024, B1152, B1600, "
     "B2304, B3136, B4096: give one of them, or --fingerprint 0x... (xdputil query on the board) / --arch-json FILE for another DPU"),
    ("dpu-kv260", DpuChoice("fingerprint", "101000016010406"), "--fingerprint '101000016010406' is not a DPU fingerprint: "
     "give the hex number xdputil query prints on the board, e.g. 0x101000016010406"),
    ("dpu-kv260", DpuChoice("fingerprint", "0x603000b56011831"), "--fingerprint 0x603000b56011831: fingerprint "
     "0x603000b56011831 is a DPUCVDX8G (DPUCVDX8G_ISA3_C32B3) but dpu-kv260 has a DPUCZDX8G: choose the dpu-* target "
     "of that board, or that board's fingerprint"),
    ("onnx", DpuChoice("dpu_arch", "B3136"), "--dpu-arch B3136: onnx has no DPU: drop it or choose a dpu-* target"),
])
def test_bad_dpu_choices_name_the_fix(target, choice, message):
    with pytest.raises(UserError) as err:
        load_ruleset(target, choice)
    assert str(err.value) == message


def test_bad_arch_json_is_one_line(tmp_path):
    missing, broken, empty = tmp_path / "none.json", tmp_path / "broken.json", tmp_path / "empty.json"
    broken.write_text("{fingerprint")
    empty.write_text("{}")
    messages = []
    for path in (missing, broken, empty):
        with pytest.raises(UserError) as err:
            load_ruleset("dpu-kv260", DpuChoice("arch_json", str(path)))
        messages.append(str(err.value))
    assert messages == [
        f"--arch-json {missing}: no such file: give the arch.json you will compile with (the DPU build writes one; "
        f'{{"fingerprint": "0x101000016010406"}} is enough)',
        f"--arch-json {broken} is not JSON (JSONDecodeError): give the arch.json vai_c_xir takes",
        f'--arch-json {empty} has no "fingerprint": give the arch.json of the DPU build (at least {{"fingerprint": "0x101000016010406"}})']


def _dwconv(channels: int, dilation: int) -> onnx.ModelProto:
    """ViC's temporal conv on the frame axis laid out as width: depthwise 1x3, dilation (1, d)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 1, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 1, 64])
    w = numpy_helper.from_array(np.ones((channels, 1, 1, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=channels, dilations=[1, dilation], pads=[0, dilation, 0, dilation], name="dw")
    return helper.make_model(helper.make_graph([node], "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])


def _conv3x3(cin: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 4, 4])
    w = numpy_helper.from_array(np.zeros((16, cin, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")
    return helper.make_model(helper.make_graph([node], "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])


def test_dilation_and_bank_rules_differ_between_b3136_and_b4096():
    """UG1414: dilation x channels <= 256 x channel_parallel (4096 vs 3584); weights
    kernel x ceil(ic / ICP) <= 2048 (3200 input channels fit 16-wide banks, not 14-wide)."""
    for model, rule, message in ((_dwconv(272, 14), "dpu.dwconv.dilation-channels",
                                  "depthwise dilation 14 x 272 channels = 3808 > 256 * 14 = 3584"),
                                 (_conv3x3(3200), "dpu.conv.bank-depth",
                                  "weights need bank depth 3*3*ceil(3200/14)*ceil(14/14) = 2061 > 2048")):
        assert check_model(model, load_ruleset("dpu-kv260")).compliant
        result = check_model(model, load_ruleset("dpu-kv260", B3136))
        assert [(f.rule, f.message) for f in result.findings] == [(rule, message)]


def test_the_temporal_channel_split_follows_the_dpu():
    """The dpu-kv260 recipe's lowering splits the dilation-14 temporal conv into groups of 256 * ICP // 14 channels."""
    kv260 = get_target("dpu-kv260")
    split = {name: next(p.limit for p in dataclasses.replace(kv260, dpu=choice).passes()
                        if isinstance(p, SplitTemporalChannels)) // 14 for name, choice in (("B4096", None), ("B3136", B3136))}
    assert split == {"B4096": 292, "B3136": 256}


def test_vidconv_check_takes_the_dpu_and_reports_crossing_bytes(tmp_path, capsys):
    path = tmp_path / "dw.onnx"
    onnx.save(_dwconv(272, 14), str(path))
    assert check_main([str(path), "--target", "dpu-kv260", "--json"]) == 0
    capsys.readouterr()
    assert check_main([str(path), "--target", "dpu-kv260", "--dpu-arch", "B3136", "--json"]) == 1
    part = json.loads(capsys.readouterr().out)["partition"]
    assert part["subgraphs"] == [{"device": "CPU", "ops": ["dw"], "dpu_to_cpu_bytes": 0, "cpu_to_dpu_bytes": 0}]
    assert check_main([str(path), "--target", "dpu-kv260", "--dpu-arch", "B3136", "--fingerprint", "0x1"]) == 2
    assert capsys.readouterr().err.strip() == ("vidconv-check: error: --dpu-arch B3136 and --fingerprint 0x1 both name "
                                               "the DPU: give one of --dpu-arch, --fingerprint, --arch-json")


def test_crossing_bytes_per_cpu_subgraph():
    """conv (DPU) -> Transpose (CPU) -> conv (DPU): 8 x 4 x 4 int8 each way."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])
    w = numpy_helper.from_array(np.ones((8, 8, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="c1"),
             helper.make_node("Transpose", ["a"], ["b"], perm=[0, 1, 3, 2], name="t"),
             helper.make_node("Conv", ["b", "w"], ["y"], name="c2")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])
    cpu = [sg for sg in check_model(model, "dpu-kv260").partition["subgraphs"] if sg["device"] == "CPU"]
    assert cpu == [{"device": "CPU", "ops": ["t"], "dpu_to_cpu_bytes": 128, "cpu_to_dpu_bytes": 128}]


def _compile_sh(tmp_path: Path, fingerprint: str) -> subprocess.CompletedProcess:
    script = tmp_path / "compile.sh"
    script.write_text(compile_script(dpu_board(load_ruleset("dpu-kv260", B3136)), "arch.json"))
    (tmp_path / "arch.json").write_text(json.dumps({"fingerprint": fingerprint}))
    return subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "VAI_PYTHON": "/bin/false"})


def test_compile_sh_refuses_an_arch_json_of_another_dpu(tmp_path):
    other = _compile_sh(tmp_path, "0x101000056010407")
    assert other.returncode == 2 and other.stderr.strip() == (
        "compile.sh: arch.json has fingerprint 0x101000056010407 but the bundle was checked for 0x101000016010406 "
        "(DPUCZDX8G_ISA1_B3136): re-export with --arch-json arch.json (vidconv-export --target dpu-kv260 --arch-json "
        "FILE), or set ARCH_JSON to the arch.json of 0x101000016010406")
    same = _compile_sh(tmp_path, "0x0101000016010406")  # leading zeros: the same number
    assert same.returncode != 2 and "compile.sh:" not in same.stderr  # it went on (to vai_q, absent here)


def test_board_runner_says_what_to_rebuild():
    board = {"target": "dpu-kv260", "dpu_fingerprint": "0x101000056010407"}
    assert run_xmodel.fingerprint_problem(board, [0x101000056010407], {"early": 0x101000056010407}) is None
    assert run_xmodel.fingerprint_problem(board, [], {}) is None  # no xdputil: VART checks on its own
    assert run_xmodel.fingerprint_problem(board, [B3136_KRIA], {}) == (
        "this board's DPU has fingerprint 0x101000016010406 (xdputil query) but the bundle was built for "
        "0x101000056010407: rebuild it with vidconv-export --target dpu-kv260 --fingerprint 0x101000016010406, "
        "then compile it (compile/docker_run.sh)")
    assert run_xmodel.fingerprint_problem(board, [0x101000056010407], {"later": B3136_KRIA}) == (
        "later.xmodel was compiled for DPU fingerprint 0x101000016010406 but the bundle was built for 0x101000056010407: "
        "compile it again with the bundle's compile/compile.sh (it checks the arch.json) and copy the xmodels here")


@pytest.fixture(scope="module")
def b3136_bundle(tmp_path_factory, tiny_dataset):
    out = tmp_path_factory.mktemp("b3136")
    code = export_main(["--target", "dpu-kv260", "--dpu-arch", "B3136", "--arch", "vic-nano-dpu", "--classes", "10",
                        "--image-size", "32", "--calib-clips", "1", "--calib", str(tiny_dataset), "--out", str(out)])
    return code, out / "vic-nano-dpu-dpu-kv260-b3136"  # a named DPU gets its own folder beside the default's


def test_a_b3136_bundle_checks_compiles_and_reports_for_b3136(b3136_bundle):
    code, bundle = b3136_bundle
    assert code == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    dpu = manifest["recipe"]["dpu"]
    assert (dpu["name"], dpu["fingerprint"], dpu["chosen_by"]) == ("DPUCZDX8G_ISA1_B3136", "0x101000016010406", "--dpu-arch B3136")
    assert json.loads((bundle / "compile" / "arch.json").read_text()) == {"fingerprint": "0x101000016010406"}
    script = (bundle / "compile" / "compile.sh").read_text()
    assert "BUNDLE_FINGERPRINT=0x101000016010406" in script and "--target DPUCZDX8G_ISA1_B3136" in script
    assert 'ARCH_JSON="${ARCH_JSON:-arch.json}"' in script
    board = json.loads((bundle / "board" / "board.json").read_text())
    assert (board["dpu"], board["dpu_fingerprint"]) == ("DPUCZDX8G_ISA1_B3136", "0x101000016010406")
    assert manifest["throughput"]["ops_per_clock_per_core"] == 3136
    assert "DPUCZDX8G_ISA1_B3136, fingerprint 0x101000016010406 (--dpu-arch B3136)" in (bundle / "report.md").read_text()


def test_start_from_refuses_a_bundle_of_another_dpu(b3136_bundle, tmp_path, capsys):
    # Continuing the B3136 bundle as a B4096 one would mix two DPUs' rules, splits and golden vectors.
    code, bundle = b3136_bundle
    assert code == 0
    moved = tmp_path / "vic-nano-dpu-dpu-kv260-b3136"
    shutil.copytree(bundle, moved)  # then offered where a B4096 run looks for its bundle
    (moved.parent / "vic-nano-dpu-dpu-kv260-b4096").symlink_to(moved)
    code = export_main(["--target", "dpu-kv260", "--dpu-arch", "B4096", "--arch", "vic-nano-dpu", "--classes", "10",
                        "--image-size", "32", "--start-from", "golden_vectors", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "was exported for DPU fingerprint 0x101000016010406, not 0x101000056010407" in err
