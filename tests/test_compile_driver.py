"""The Vitis AI compile driver: the compile/ dir it writes, the rebuild of our graphs for vai_q, the not-run record."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from vidconv_deploy import build_model
from vidconv_deploy.dpu import compile as driver
from vidconv_deploy.dpu import vaiq_script
from vidconv_deploy.dpu.boards import dpu_board, dpu_targets
from vidconv_deploy.dpu.graph_spec import graph_spec
from vidconv_deploy.errors import UserError
from vidconv_deploy.bundle import Bundle
from vidconv_deploy.export.deploy_model import to_deploy
from vidconv_deploy.export.onnx_export import MethodModule, export_graph
from vidconv_deploy.onnx_session import run_onnx
from vidconv_deploy.export.passes import STANDARD_PASSES, FoldBatchNorms, SplitTemporalChannels, apply_passes
from vidconv_deploy.models.collage import frames_to_collage
from vidconv_deploy.quant import quantize_onnx

TINY = {"dims": (16, 16, 16, 16), "depths": (1, 1, 1, 1), "neck_dim": 16}


@pytest.fixture(scope="module")
def graphs():
    """Float early/later graphs of a tiny DPU variant (2x2 collage); the temporal convs split into Split/Conv/Concat."""
    torch.manual_seed(0)
    model = build_model("vic-nano-dpu", num_classes=5, image_size=64, frames=4, **TINY).eval()
    deploy = apply_passes(to_deploy(model), (*STANDARD_PASSES, FoldBatchNorms(), SplitTemporalChannels(8)))
    early = export_graph(MethodModule(deploy, deploy.early), torch.randn(deploy.frame_shape()), "frame", "features").model
    later = export_graph(MethodModule(deploy, deploy.later), torch.randn(deploy.collage_shape()), "collage", "logits").model
    assert "Split" in {n.op_type for n in later.graph.node}
    return early, later


def clips(n: int = 2) -> list[np.ndarray]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 64, 64, generator=gen).numpy() for _ in range(n)]


def test_board_facts_come_from_the_rule_sets():
    assert set(dpu_targets()) == {"dpu-kv260", "dpu-zcu102", "dpu-zcu104", "dpu-vck190", "dpu-vek280"}
    kv260 = dpu_board("dpu-kv260")
    assert (kv260.core, kv260.family, kv260.arch_json) == (
        "DPUCZDX8G_ISA1_B4096", "DPUCZDX8G", "/opt/vitis_ai/compiler/arch/DPUCZDX8G/KV260/arch.json")
    assert dpu_board("dpu-vck190").arch_json == "/opt/vitis_ai/compiler/arch/DPUCVDX8G/VCK190/arch.json"
    assert dpu_board("dpu-vek280").family == "DPUCV2DX8G"
    with pytest.raises(UserError, match="target 'onnx' is not a DPU board: choose one of dpu-kv260"):
        dpu_board("onnx")
    with pytest.raises(UserError, match="did you mean dpu-kv260"):
        dpu_board("dpu-kv26")


def test_prepare_writes_scripts_and_calibration(tmp_path, graphs):
    early, later = graphs
    calib = clips()
    plan = driver.prepare_compile(tmp_path, "dpu-kv260", early, later, calib, (2, 2))
    out = tmp_path / "compile"
    assert plan.compile_dir == out and plan.arch_json == "/opt/vitis_ai/compiler/arch/DPUCZDX8G/KV260/arch.json"
    script = (out / "compile.sh").read_text()
    assert 'vai_c_xir -x "$quantized" -a "$ARCH_JSON" -o "xmodel/$graph" -n "$graph"' in script
    assert 'ARCH_JSON="${ARCH_JSON:-/opt/vitis_ai/compiler/arch/DPUCZDX8G/KV260/arch.json}"' in script
    assert "--target DPUCZDX8G_ISA1_B4096" in script and "for graph in early later; do" in script
    assert plan.docker_command == "compile/docker_run.sh"
    assert ('docker run --rm --user "$(id -u):$(id -g)" -e HOME=/tmp -v "$bundle:/bundle" '
            "-w /bundle/compile vidconv-deploy/vitis-ai:3.5 compile.sh") in (out / "docker_run.sh").read_text()
    assert (out / "quantize_vaiq.py").read_text() == Path(vaiq_script.__file__).read_text()
    # calibration: every frame for the early graph; each clip's collage of float early outputs for the later
    frames = np.load(out / "calib" / "early.npy")
    np.testing.assert_array_equal(frames, np.concatenate(calib))
    collages = np.load(out / "calib" / "later.npy")
    features = np.concatenate([run_onnx(early, {"frame": calib[1][t : t + 1]})[0] for t in range(4)])
    np.testing.assert_array_equal(collages[1], frames_to_collage(torch.from_numpy(features), (2, 2)).numpy()[0])
    assert collages.shape == (2, 16, 8, 8)
    assert json.loads((out / "model" / "later.json").read_text())["input"] == {"name": "collage", "shape": [1, 16, 8, 8]}


def test_here_nothing_compiles_and_the_manifest_says_why(tmp_path, graphs, monkeypatch):
    monkeypatch.delenv("VIDCONV_VAI_PYTHON", raising=False)
    early, later = graphs
    bundle = Bundle(tmp_path, "dpu-zcu104")
    plan = driver.prepare_compile(tmp_path, "dpu-zcu104", early, later, clips(1), (2, 2))
    result = driver.run_compile(plan, bundle)
    assert not result.ran and result.xmodels == ()
    assert result.reason.startswith("pytorch_nndct (vai_q_pytorch) is not importable and "
                                    "/opt/vitis_ai/conda/envs/vitis-ai-pytorch/bin/python does not exist; "
                                    "vai_c_xir is not on PATH: no xmodel was built")
    step = bundle.steps[-1]
    assert step == {"name": "compile xmodel", "status": "not run", "reason": result.reason,
                    "script": "compile/compile.sh", "docker_command": plan.docker_command}
    assert list(tmp_path.rglob("*.xmodel")) == []


def test_a_failing_toolchain_is_recorded_not_hidden(tmp_path, graphs, monkeypatch):
    """With the tools 'found', compile.sh really runs; vai_q is missing here, so it fails and says so."""
    early, later = graphs
    monkeypatch.setattr(driver, "missing_tools", lambda: [])
    monkeypatch.setattr(driver, "vai_python", lambda: sys.executable)
    bundle = Bundle(tmp_path, "dpu-kv260")
    plan = driver.prepare_compile(tmp_path, "dpu-kv260", early, later, clips(1), (2, 2))
    result = driver.run_compile(plan, bundle)
    assert not result.ran and result.reason.startswith("compile.sh failed (exit 1): ")
    assert "No module named 'pytorch_nndct'" in result.log.read_text()
    assert bundle.steps[-1]["status"] == "failed" and bundle.steps[-1]["log"] == "compile/logs/compile.log"
    assert list(tmp_path.rglob("*.xmodel")) == []


def test_the_rebuilt_graphs_compute_what_the_onnx_graphs_compute(tmp_path, graphs):
    for name, model in zip(("early", "later"), graphs):
        spec, weights = graph_spec(model, name)
        (tmp_path / f"{name}.json").write_text(json.dumps(spec))
        np.savez(tmp_path / f"{name}.npz", **weights)
        module = vaiq_script.load_graph(tmp_path / f"{name}.json")
        assert type(module).__name__ == name.capitalize()  # vai_q names the xmodel <Class>_int.xmodel
        x = np.random.default_rng(2).standard_normal(spec["input"]["shape"]).astype(np.float32)
        expected = run_onnx(model, {spec["input"]["name"]: x})[0]
        with torch.no_grad():
            got = module(torch.from_numpy(x)).numpy()
        assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
        nodes = {n.name for n in model.graph.node}
        assert all(layer["onnx_node"] in nodes for layer in spec["layers"])
    assert "n0_stem_stem_0_Conv" in dict(vaiq_script.load_graph(tmp_path / "early.json").named_children())


def test_the_vaiq_script_is_python_3_8_code():
    """It runs in the Vitis AI image's Python 3.8 env; the board runner must run on old board images too."""
    for path in (Path(vaiq_script.__file__), Path(__file__).parents[1] / "hw" / "board" / "run_xmodel.py"):
        ast.parse(path.read_text(), feature_version=(3, 8))


def test_ops_without_a_dpu_kernel_are_refused():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 2])
    model = helper.make_model(helper.make_graph([helper.make_node("Transpose", ["x"], ["y"], "/t", perm=[0, 2, 3, 1])],
                                                "g", [x], [y]))
    with pytest.raises(UserError, match=r"the later graph has Transpose \(/t\), which has no DPU kernel"):
        graph_spec(model, "later")


def test_calibration_input_errors(graphs):
    early, later = graphs
    with pytest.raises(UserError, match="no calibration clips: give --calib DIR"):
        driver.calibration_samples(early, later, [], (2, 2))
    with pytest.raises(UserError, match=r"calibration clip has 3 frames, the 2x2 collage needs 4"):
        driver.calibration_samples(early, later, [np.zeros((3, 3, 64, 64), np.float32)], (2, 2))
    with pytest.raises(UserError, match=r"does not fit frames \(3, 64, 64\)"):
        driver.calibration_samples(early, later, [np.zeros((4, 3, 32, 32), np.float32)], (2, 2))


def test_a_moved_bundle_compiles_where_it_now_is(tmp_path, graphs):
    """docker_run.sh mounts the folder it sits in, not the one it was written to; compile/ names no host path."""
    early, later = graphs
    driver.prepare_compile(tmp_path / "written", "dpu-kv260", early, later, clips(1), (2, 2))
    texts = [p.read_text() for p in (tmp_path / "written").rglob("*") if p.suffix in (".sh", ".py", ".json")
             and p.is_file()]
    assert texts and not [t for t in texts if str(tmp_path) in t]
    moved = tmp_path / "elsewhere" / "bundle"
    moved.parent.mkdir()
    (tmp_path / "written").rename(moved)
    stub = tmp_path / "bin" / "docker"  # prints its arguments instead of running a container
    stub.parent.mkdir()
    stub.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    stub.chmod(0o755)
    env = {"PATH": f"{stub.parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    args = subprocess.run(["bash", str(moved / "compile" / "docker_run.sh")], env=env, cwd=tmp_path, capture_output=True,
                          text=True, check=True).stdout.splitlines()
    mount = args[args.index("-v") + 1]
    assert mount == f"{moved.resolve()}:/bundle" and args[args.index("-w") + 1] == "/bundle/compile"
    assert args[-2:] == ["vidconv-deploy/vitis-ai:3.5", "compile.sh"]
    assert (moved / "compile" / "compile.sh").is_file()  # what the container runs, under the mount


def test_compare_fix_points_on_hand_made_files():
    ours = {"param": {"stem.weight": [[8, 7]], "stem.bias": [[8, 9]]},
            "output": {"frame": [[8, 6]], "/stem/Conv": [[8, 4]], "/stage1/Relu": [[8, 5]]},
            "input": {}, "version": "ours"}
    vaiq = {"param": {"Early::n0_stem_Conv.weight": [[8, 7]], "Early::n0_stem_Conv.bias": [[8, 8]]},
            "output": {"Early::input_0": [[8, 6]], "Early::nndct_conv2d_1": [[8, 3]], "Early::nndct_relu_2": [[8, None]],
                       "Early::nndct_add_3": [[8, 2]]},
            "input": {}, "fast_finetuned": False, "bias_corrected": False, "version": "3.5.0"}
    names = {"Early::n0_stem_Conv.weight": "stem.weight", "Early::n0_stem_Conv.bias": "stem.bias",
             "Early::input_0": "frame", "Early::nndct_conv2d_1": "/stem/Conv", "Early::nndct_relu_2": "/stage1/Relu"}
    result = driver.compare_fix_points(ours, vaiq, names)
    assert result.matched == 4
    assert result.differences == (
        driver.FixPointDifference("stem.bias", "Early::n0_stem_Conv.bias", "param", 9, 8),
        driver.FixPointDifference("/stem/Conv", "Early::nndct_conv2d_1", "output", 4, 3),
    )
    assert result.only_vaiq == ("Early::nndct_add_3",)  # no name of ours
    assert result.only_ours == ("/stage1/Relu",)  # vai_q left it unquantized (null position)
    assert result.to_dict()["differences"][1]["vaiq"] == 3


def test_our_quant_info_has_vai_q_layout(graphs):
    """Our quantizer's quant_info.json compared with itself: every entry matches, none differs."""
    early, _ = graphs
    info = quantize_onnx(early, [{"frame": c[:1]} for c in clips()]).info
    result = driver.compare_fix_points(info, info)
    points = driver.fix_points(info)
    assert result.matched == len(points) > 10 and result.differences == () and result.only_ours == ()
    assert points["frame"] == info["output"]["frame"][0][1]


def test_compile_dir_fix_points_are_compared_per_graph(tmp_path, graphs):
    """After compile.sh, vai_q's quant_info.json and names.json of each graph meet our quant_info.json of that graph."""
    early, later = graphs
    info = quantize_onnx(early, [{"frame": c[:1]} for c in clips()]).info
    ours = tmp_path / "quant_info_early.json"
    ours.write_text(json.dumps(info))
    plan = driver.prepare_compile(tmp_path, "dpu-kv260", early, later, clips(1), (2, 2),
                                  quant_info={"early": ours, "later": tmp_path / "absent.json"})
    vaiq_dir = plan.compile_dir / "vaiq" / "early"
    vaiq_dir.mkdir(parents=True)
    node = next(k for k in info["output"] if k.endswith("/Conv"))
    theirs = {"param": {}, "output": {"Early::nndct_conv2d_1": [[8, info["output"][node][0][1] + 1]]}, "input": {}}
    (vaiq_dir / "quant_info.json").write_text(json.dumps(theirs))
    (vaiq_dir / "names.json").write_text(json.dumps({"Early::nndct_conv2d_1": node}))
    comparisons = driver.compare_with_vaiq(plan)
    assert list(comparisons) == ["early"]  # vai_q wrote nothing for the later graph
    (difference,) = comparisons["early"].differences
    assert (difference.tensor, difference.kind, difference.vaiq - difference.ours) == (node, "output", 1)


class _Calibrated(Exception):
    """Raised by the fake torch_quantizer: the test needs only what was set before it was called."""


def test_vaiq_runs_without_weight_equalization_and_bias_correction(tmp_path, monkeypatch):
    # vai_q_pytorch equalizes weights and corrects biases by default (option_list.py); the xmodel must hold
    # the quantization the bundle verified, so both options are off before the first torch_quantizer call.
    import types

    options: dict[str, object] = {}
    seen: list[dict[str, object]] = []

    def torch_quantizer(mode, *args, **kwargs):
        seen.append(dict(options))
        raise _Calibrated

    nndct_utils = types.SimpleNamespace(option_util=types.SimpleNamespace(set_option_value=options.__setitem__))
    monkeypatch.setitem(sys.modules, "pytorch_nndct", types.ModuleType("pytorch_nndct"))
    monkeypatch.setitem(sys.modules, "pytorch_nndct.apis", types.SimpleNamespace(torch_quantizer=torch_quantizer))
    monkeypatch.setitem(sys.modules, "nndct_shared", types.ModuleType("nndct_shared"))
    monkeypatch.setitem(sys.modules, "nndct_shared.utils", nndct_utils)
    monkeypatch.setattr(vaiq_script, "load_graph", lambda path: torch.nn.Identity())
    calib = tmp_path / "calib.npy"
    np.save(calib, np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(_Calibrated):
        vaiq_script.quantize(tmp_path / "early.json", calib, tmp_path / "out", "DPUCZDX8G_ISA1_B4096")
    assert seen == [{"nndct_equalization": False, "nndct_param_corr": False}]
