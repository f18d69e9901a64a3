"""Targets as data (issue 11): the registry, recipes with ``_base_``, a new target from YAML alone, the step
runner (--stop-after, --start-from), and the one verdict with its exit codes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
import pytest

from vidconv_deploy import build_model, save_checkpoint
from vidconv_deploy.cli.check import main as check_main
from vidconv_deploy.cli.export import main as export_main
from vidconv_deploy.errors import UserError
from vidconv_deploy.targets.registry import get_target, target_names
from vidconv_deploy.verdict import EXIT_FAILED, EXIT_OK, Verdict

TINY = {"dims": (8, 16, 24, 32), "depths": (1, 1, 1, 1), "neck_dim": 40}


def tiny_checkpoint(path: Path) -> Path:
    save_checkpoint(build_model("vic-t", num_classes=5, frames=4, image_size=64, layer_scale_init=0.5, **TINY), path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture
def recipes(tmp_path, monkeypatch) -> Path:
    """A user's recipe folder, searched before the shipped export/."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    monkeypatch.setenv("VIDCONV_RECIPES", str(folder))
    return folder


def files_of(bundle: Path) -> dict[str, str]:
    return {str(p.relative_to(bundle)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(bundle.rglob("*")) if p.is_file()}


def last_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in line for line in err)
    return err[-1]


# ---- the registry ---------------------------------------------------------------------------------------

def test_one_list_of_targets_with_boards_and_recipes_from_data():
    assert target_names() == ["dpu-kv260", "dpu-vck190", "dpu-vek280", "dpu-zcu102", "dpu-zcu104", "finn-kv260",
                              "finn-pynq-z2", "finn-vck190", "finn-zcu104", "onnx", "vaiep-ryzen-ai", "vaiep-ve2-npu", "vaiep-vek280"]
    kv260 = get_target("dpu-kv260")
    assert kv260.family == "dpu" and kv260.board["clock_mhz"] == 300 and kv260.ruleset.data["channel_parallel"] == 16
    assert kv260.default_model == "vic-nano-dpu-hard" and kv260.step_names[:2] == ("export_float", "rewrite")
    # inherited from _base_/dpu.yaml, which inherits _base_/onnx.yaml (the tolerance)
    assert [p.name for p in kv260.passes()][-2:] == ["fold-batchnorms", "split-temporal-channels"]
    assert kv260.passes()[-1].limit == 256 * 16 and kv260.recipe["tolerance"] == 1e-5
    finn = get_target("finn-pynq-z2")
    assert finn.board["part"] == "xc7z020clg400-1" and finn.board["budget"]["URAM"] == 0 and finn.quantizer["bits"] == "w4a4"
    assert {t.name for t in get_target("dpu-kv260").availability()} >= {"vai_q_pytorch", "vai_c_xir"}
    assert next(t for t in get_target("finn-kv260").availability() if t.name == "finn-plus").version == "1.6.1"
    with pytest.raises(UserError, match="unknown target 'dpu-kv26': did you mean dpu-kv260"):
        get_target("dpu-kv26")


def test_list_targets_says_what_needs_tools_absent_here(capsys):
    assert export_main(["--list-targets"]) == 0
    out = capsys.readouterr().out
    assert "finn-zcu104" in out and "compile_xmodel" in out and "finn_build" in out


@pytest.mark.parametrize(("text", "message"), [
    ("_base_: onnx\nsteps: [export_float, no_such_step]\n", "lists unknown step(s) no_such_step"),
    ("_base_: onnx\npasses: [fold-everything]\n", "lists unknown pass(es) fold-everything"),
    ("family: onnx\n", "lacks rules, default_model, steps"),
    ("_base_: mine.yaml\n", "inherits from itself"),
    ("- a list\n", "is not a YAML mapping"),
    ("_base_: onnx\nrules: dpu-kv999\n", "unknown target 'dpu-kv999'"),
])
def test_a_bad_recipe_is_one_line(recipes, tmp_path, capsys, text, message):
    (recipes / "mine.yaml").write_text(text)
    assert export_main(["--target", "mine", "--out", str(tmp_path / "out")]) == 2
    assert message in last_error(capsys) and not (tmp_path / "out").exists()


# ---- a new target from YAML alone ------------------------------------------------------------------------

def test_new_target_from_yaml_alone_exports_and_checks(recipes, ckpt, tmp_path, capsys):
    """A recipe with its own pass list and without the rule check: no code, one file."""
    (recipes / "onnx-unfolded.yaml").write_text(
        "_base_: onnx\ndescription: standard ONNX, scales kept as Mul\n"
        "passes: [fold-neck-batchnorm, tile-as-concat]\n"
        "steps: [export_float, rewrite, export_deploy, export_streaming, verify_rewrite]\n")
    assert "onnx-unfolded" in target_names()
    assert export_main(["--target", "onnx-unfolded", "--checkpoint", str(ckpt), "--out", str(tmp_path / "out")]) == 0
    bundle = tmp_path / "out" / "vic-t-onnx-unfolded"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["target"] == "onnx-unfolded" and manifest["recipe"]["recipe"]["passes"] == ["fold-neck-batchnorm",
                                                                                              "tile-as-concat"]
    assert [s["name"] for s in manifest["steps"]] == ["export float graph", "rewrite", "export deploy graph",
                                                      "export streaming split", "verify rewrite"]
    assert manifest["verdict"]["holds"] and set(manifest["verdict"]["checks"]) == {"finite", "exact"}
    assert manifest["steps"][1]["passes"] == ["fold-neck-batchnorm", "tile-as-concat"]
    capsys.readouterr()
    assert check_main([str(bundle / "deploy.onnx"), "--target", "onnx-unfolded"]) == 0


def test_onnx_family_fails_compliance_with_exit_1(recipes, ckpt, tmp_path, capsys):
    """The faithful graph checked against a DPU's rules (a YAML-only target): not compliant is exit 1, with a bundle."""
    (recipes / "onnx-on-kv260.yaml").write_text("_base_: onnx\nrules: dpu-kv260\n")
    assert export_main(["--target", "onnx-on-kv260", "--checkpoint", str(ckpt), "--out", str(tmp_path / "out")]) == 1
    manifest = json.loads((tmp_path / "out" / "vic-t-onnx-on-kv260" / "manifest.json").read_text())
    assert manifest["verdict"]["failed"] == ["compliant"] and manifest["compliant"] is False
    assert "verdict: FAILED: compliant FAILED (dpu-kv260 rules: deploy:" in capsys.readouterr().out.replace("\n", " ")


# ---- the step runner -------------------------------------------------------------------------------------

def test_stop_after_records_the_rest_as_not_run(ckpt, tmp_path):
    assert export_main(["--checkpoint", str(ckpt), "--out", str(tmp_path), "--stop-after", "export_deploy"]) == 0
    steps = json.loads((tmp_path / "vic-t-onnx" / "manifest.json").read_text())["steps"]
    assert [s["status"] for s in steps] == ["ran"] * 3 + ["not run"] * 3
    assert steps[-1] == {"name": "check operators", "status": "not run", "reason": "--stop-after export_deploy"}
    assert not (tmp_path / "vic-t-onnx" / "early.onnx").exists()


def test_start_from_reruns_only_the_steps_after(ckpt, tmp_path):
    argv = ["--checkpoint", str(ckpt), "--out", str(tmp_path)]
    assert export_main(argv) == 0
    bundle = tmp_path / "vic-t-onnx"
    first = json.loads((bundle / "manifest.json").read_text())
    before = files_of(bundle)
    assert export_main([*argv, "--start-from", "check_operators"]) == 0
    again = json.loads((bundle / "manifest.json").read_text())
    assert again["steps"][:5] == first["steps"][:5] and again["steps"][5]["name"] == "check operators"
    assert again["verdict"]["checks"] == first["verdict"]["checks"] and again["verification"] == first["verification"]
    after = files_of(bundle)
    assert {k: v for k, v in after.items() if k != "manifest.json"} == {k: v for k, v in before.items()
                                                                       if k != "manifest.json"}


@pytest.mark.parametrize(("extra", "message"), [
    (["--start-from", "quantize"], "--start-from quantize: not a step of this target; its steps are export_float"),
    (["--start-from", "rewrite", "--stop-after", "export_float"], "--stop-after export_float comes before"),
    (["--start-from", "rewrite"], "--start-from needs a finished bundle"),
    (["--start-from", "rewrite", "--classes", "7"], "--classes 7 conflicts with"),
])
def test_bad_step_flags_are_one_line(ckpt, tmp_path, capsys, extra, message):
    assert export_main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), *extra]) == 2
    assert message in last_error(capsys) and not (tmp_path / "out").exists()


def test_start_from_needs_the_same_model(ckpt, tmp_path, capsys):
    assert export_main(["--checkpoint", str(ckpt), "--out", str(tmp_path), "--stop-after", "rewrite"]) == 0
    other = tiny_checkpoint(tmp_path / "other.safetensors")
    cfg = {**json.loads((tmp_path / "vic-t-onnx" / "manifest.json").read_text())["model"]["config"]}
    assert cfg["layer_scale_init"] == 0.5
    save_checkpoint(build_model("vic-t", num_classes=5, frames=4, image_size=64, layer_scale_init=0.25, **TINY), other)
    assert export_main(["--checkpoint", str(other), "--out", str(tmp_path), "--start-from", "export_deploy"]) == 2
    assert "with another model config" in last_error(capsys)


def test_json_prints_the_verdict_and_artifacts(ckpt, tmp_path, capsys):
    assert export_main(["--checkpoint", str(ckpt), "--out", str(tmp_path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["verdict"]["holds"] and printed["verdict"]["exit_code"] == 0
    assert set(printed["artifacts"]) == {"float_onnx", "deploy_onnx", "early_onnx", "later_onnx", "compliance_json"}
    assert printed["bundle"] == str(tmp_path / "vic-t-onnx")


# ---- the verdict -----------------------------------------------------------------------------------------

def test_verdict_exit_codes_and_accepted_failures():
    verdict = Verdict()
    assert verdict.holds and verdict.exit_code == EXIT_OK and verdict.summary() == "nothing was checked"
    verdict.record("exact", True, "within 1e-5")
    verdict.record("fits", False, "LUT 118%", accepted=True)
    assert verdict.holds and verdict.to_dict()["checks"]["fits"] == {"holds": False, "detail": "LUT 118%", "accepted": True}
    verdict.record("bit_exact", False, "later graph")
    assert verdict.failed == ["bit_exact"] and verdict.exit_code == EXIT_FAILED
    assert verdict.summary() == "bit_exact FAILED (later graph); exact holds; fits failed, accepted"
