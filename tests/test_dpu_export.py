"""``vidconv-export --target dpu-<board>`` end to end on a small vic-nano-dpu and real video clips.

The bundle must hold every artifact the issue names; the graphs must check fully on the DPU; the
integer reference must be bit-exact with ONNX Runtime; no xmodel may appear without vai_c_xir; and
the board runner, on the reference backend, must reproduce the golden vectors.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vidconv_deploy import build_model, save_checkpoint
from vidconv_deploy.cli.export import main as export_main

ARGS = ["--classes", "10", "--image-size", "32", "--calib-clips", "2"]


@pytest.fixture(scope="module")
def dpu_bundle(tmp_path_factory, tiny_dataset):
    out = tmp_path_factory.mktemp("dpu")
    code = export_main(["--target", "dpu-kv260", "--arch", "vic-nano-dpu", *ARGS, "--calib", str(tiny_dataset),
                        "--out", str(out)])
    return code, out / "vic-nano-dpu-dpu-kv260"


def test_bundle_holds_every_artifact_and_says_what_did_not_run(dpu_bundle):
    code, bundle = dpu_bundle
    assert code == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    for role in ("deploy_onnx", "early_onnx", "later_onnx", "quant_onnx", "quant_info", "compliance_json", "golden_dir",
                 "report", "compile_dir", "board_dir"):
        assert role in manifest["artifacts"], role
    assert manifest["compliant"] is True
    assert all(r["bit_exact_vs_onnxruntime"] for r in manifest["reference"].values())
    steps = {s["name"]: s for s in manifest["steps"]}
    assert steps["compile xmodel"]["status"] == "not run" and "no xmodel was built" in steps["compile xmodel"]["reason"]
    assert not list(bundle.rglob("*.xmodel"))
    assert manifest["calibration"]["source"].startswith("2 clips from")
    report = (bundle / "report.md").read_text()
    assert "Every op runs on the DPU" in report and "bit-exact" in report and "No xmodel was built" in report
    assert (bundle / "report_files" / "sqnr_early.png").read_bytes()[:4] == b"\x89PNG"


def test_quantized_graphs_use_power_of_two_scales_and_pin_the_collage(dpu_bundle):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    _, bundle = dpu_bundle
    early, later = (onnx.load(str(bundle / "quant" / f"{g}.onnx")) for g in ("early", "later"))
    for graph in (early, later):
        for init in graph.graph.initializer:
            if "scale" in init.name:
                value = float(numpy_helper.to_array(init))
                assert value == 2.0 ** round(np.log2(value))
    from vidconv_deploy.dpu.board_dir import io_fix_points

    assert io_fix_points(early)[1] == io_fix_points(later)[0]


def test_board_runner_reproduces_the_golden_vectors(dpu_bundle):
    _, bundle = dpu_bundle
    run = subprocess.run([sys.executable, str(bundle / "board" / "run_xmodel.py"), str(bundle / "board"), "--backend",
                          "reference", "--golden", str(bundle / "golden"), "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def test_faithful_checkpoint_is_converted_with_a_warning(tmp_path, tiny_dataset, capsys):
    ckpt = tmp_path / "faithful.safetensors"
    save_checkpoint(build_model("vic-nano", num_classes=10, image_size=32), ckpt)
    assert export_main(["--target", "dpu-zcu104", "--checkpoint", str(ckpt), "--calib-clips", "1", "--calib",
                        str(tiny_dataset), "--out", str(tmp_path)]) == 0
    assert "without distillation" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "vic-nano-dpu-dpu-zcu104" / "manifest.json").read_text())
    assert "vidconv-finetune" in manifest["model"]["weights"]["conversion"]


@pytest.mark.parametrize("argv,message", [
    (["--target", "dpu-kv26"], "unknown target 'dpu-kv26': did you mean dpu-kv260"),
    (["--target", "finn-kv250"], "unknown target 'finn-kv250': did you mean finn-kv260"),
])
def test_bad_target_is_one_line(argv, message, tmp_path, capsys):
    assert export_main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"\x00" * 64)
    assert export_main(["--target", "dpu-kv260", "--checkpoint", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]
    assert not (tmp_path / "out").exists()


def test_calibration_folder_without_videos_is_one_line(tmp_path, capsys):
    empty = tmp_path / "videos"
    empty.mkdir()
    code = export_main(["--target", "dpu-kv260", "--arch", "vic-nano-dpu", *ARGS, "--calib", str(empty), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "no videos" in err[-1]
    assert not (tmp_path / "vic-nano-dpu-dpu-kv260").exists()


def test_eval_scores_every_form_of_a_dpu_bundle(dpu_bundle, tiny_dataset, capsys):
    from vidconv_deploy.cli.evaluate import main as eval_main

    _, bundle = dpu_bundle
    assert eval_main(["--bundle", str(bundle), "--data", str(tiny_dataset), "--limit", "2", "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)["orders"]["normal"]}
    assert set(rows) == {"float", "deploy", "int8 fake-quant (ONNX Runtime)", "int8 integer reference (DPU rounding)"}
    assert rows["deploy"]["agreement_with_float"] == 100.0 and rows["float"]["videos"] == 2
    assert "sqnr_early.png" in (bundle / "eval.md").read_text()


def test_finetune_distils_a_dpu_variant_and_resumes(tmp_path, tiny_dataset, capsys):
    import yaml

    from vidconv_deploy.checkpoints import load_model
    from vidconv_deploy.cli.finetune import main as finetune_main

    teacher = tmp_path / "teacher.safetensors"
    save_checkpoint(build_model("vic-nano", num_classes=10, image_size=32, dims=(8, 16, 24, 32), depths=(1, 1, 1, 1),
                                neck_dim=16), teacher)
    out = tmp_path / "student.safetensors"
    argv = ["--teacher", str(teacher), "--student", "vic-nano-dpu", "--clips", str(tiny_dataset), "--epochs", "1",
            "--batch", "10", "--out", str(out), "--resume"]
    assert finetune_main(argv) == 0
    student, _ = load_model(out)
    assert (student.cfg.arch, student.cfg.norm, student.cfg.act) == ("vic-nano-dpu", "batch", "relu")
    card = yaml.safe_load(out.with_suffix(".yaml").read_text())
    assert card["distilled_from"]["arch"] == "vic-nano" and len(card["training"]["history"]) == 1
    assert 0 <= card["accuracy"]["test"]["top1_agreement_with_teacher"] <= 100
    assert out.with_suffix(".state.pt").exists()
    assert finetune_main([*argv[:3], "vic-t-dpu", *argv[4:]]) == 2
    assert "is not a hardware variant of the teacher (vic-nano): use --student vic-nano-dpu" in capsys.readouterr().err
