"""Issue 12: vidconv-export and vidconv-check never lie, never leave half a bundle, never show a traceback.

One case per class of failure: flags that used to be silently ignored, validation before any work,
NaN weights, forced verdict failures per family, vidconv-check on models it must refuse, --out that
cannot be used, relocatable and deterministic bundles whose files keep the umask's mode, and a
kill -9 mid-export. Each asserts the exit code (0 all holds, 1 a verdict failed, 2 bad input or a
tool error), the one error line (the last stderr line, ``<prog>: error: ...``) and that nothing was
left (no bundle, no staging folder) or lost (an existing finished bundle byte for byte).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from vidconv_deploy import build_model, save_checkpoint
from vidconv_deploy.cli.check import main as check_main
from vidconv_deploy.cli.export import main as export_main

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = {"dims": (8, 16, 24, 32), "depths": (1, 1, 2, 1), "neck_dim": 40}
#: The tiny DPU export of tests/test_dpu_export.py (with --calib the tiny_dataset fixture).
DPU_ARGS = ["--target", "dpu-kv260", "--arch", "vic-nano-dpu", "--classes", "10", "--image-size", "32",
            "--calib-clips", "2"]
ONNX_BUNDLE = "vic-t-onnx"
DPU_BUNDLE = "vic-nano-dpu-dpu-kv260"
TEXT_SUFFIXES = {".json", ".md", ".html", ".sh", ".py", ".txt"}


# --- helpers -------------------------------------------------------------------------------------------------


def run(main, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """A command in-process: (exit code, stdout, stderr); argparse's own exit counts as a return."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error(err: str, fragment: str, prog: str = "vidconv-export") -> None:
    """The last stderr line is the one error line and names the problem; no traceback anywhere."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith(f"{prog}: error: "), err
    assert fragment in lines[-1], lines[-1]
    assert [line for line in lines if f"{prog}: error" in line] == [lines[-1]], err


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``, by relative path; {} when it does not exist."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def leftovers(folder: Path) -> list[str]:
    """Staging folders, moved-aside bundles and temporary files anywhere under ``folder``."""
    if not folder.exists():
        return []
    return [str(p) for p in folder.rglob(".*") if p.name.endswith((".partial", ".tmp")) or ".old." in p.name]


def manifest(bundle: Path) -> dict:
    """The manifest, parsed as strict JSON (NaN or Infinity in it fails the test)."""
    text = (bundle / "manifest.json").read_text(encoding="utf-8")
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"manifest holds {c}: not strict JSON"))


def assert_complete(bundle: Path) -> None:
    """Every artifact the manifest names is there with its size and hash."""
    for role, art in manifest(bundle)["artifacts"].items():
        files = {art["file"]: art} if "file" in art else {f"{art['dir']}/{k}": v for k, v in art["files"].items()}
        for name, facts in files.items():
            data = (bundle / name).read_bytes()
            assert len(data) == facts["bytes"] and hashlib.sha256(data).hexdigest() == facts["sha256"], (role, name)


def tiny_model(**kw) -> torch.nn.Module:
    return build_model("vic-t", **{"num_classes": 5, "image_size": 32, "frames": 4, **TINY, **kw}).eval()


# --- fixtures: one tiny checkpoint, two onnx bundles (umask 022 and 002), one dpu bundle (umask 002) ----------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(tiny_model(), path)
    return path


def _export_under(mask: int, argv: list[str]) -> int:
    old = os.umask(mask)
    try:
        return export_main(argv)
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def onnx_bundles(tmp_path_factory, ckpt) -> tuple[Path, Path]:
    """The same onnx export twice, into two folders: under umask 022, then under umask 002."""
    bundles = []
    for mask in (0o022, 0o002):
        out = tmp_path_factory.mktemp(f"onnx{mask:03o}") / "out"
        assert _export_under(mask, ["--checkpoint", str(ckpt), "--out", str(out)]) == 0
        bundles.append(out / ONNX_BUNDLE)
    return bundles[0], bundles[1]


@pytest.fixture(scope="module")
def dpu_bundle(tmp_path_factory, tiny_dataset) -> Path:
    out = tmp_path_factory.mktemp("dpu") / "out"
    assert _export_under(0o002, [*DPU_ARGS, "--calib", str(tiny_dataset), "--out", str(out)]) == 0
    return out / DPU_BUNDLE


# --- 1. flags that used to be silently ignored --------------------------------------------------------------


@pytest.mark.parametrize("argv,fragment", [
    (["--checkpoint", str(REPO / "models/vic-nano.safetensors"), "--arch", "vic-t", "--target", "onnx"],
     "--arch vic-t conflicts with"),
    (["--target", "dpu-kv260", "--frames", "4"], "--frames 4 conflicts with"),  # shipped vic-nano-dpu-hard has 9
    (["--target", "onnx", "--image-size", "128"], "--image-size 128 conflicts with"),  # shipped vic-nano-hard is 64
    (["--target", "onnx", "--calib", "X"], "--calib applies to dpu-*, finn-* and vaiep-* targets, not onnx"),
    (["--grid", "2x3", "--frames", "4"], "--grid 2x3 holds 6 frames, not --frames 4"),
], ids=["arch-vs-checkpoint", "frames-vs-shipped-dpu", "image-size-vs-shipped", "calib-on-onnx", "grid-vs-frames"])
def test_flag_that_would_be_ignored_is_an_error(argv, fragment, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(export_main, [*argv, "--out", str(out)], capsys)
    assert code == 2 and stdout == ""
    assert_one_error(err, fragment)
    assert not out.exists()


def test_grid_alone_decides_the_frames(tmp_path, capsys):
    """--grid 2x2 without --frames is a 4-frame model (it was an error against the default 9 frames)."""
    code, _, err = run(export_main, ["--arch", "vic-nano", "--grid", "2x2", "--image-size", "32", "--classes", "3",
                                     "--stop-after", "export_float", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    config = manifest(tmp_path / "vic-nano-onnx")["model"]["config"]
    assert config["grid"] == [2, 2]
    assert manifest(tmp_path / "vic-nano-onnx")["io"]["float_onnx"]["inputs"][0]["shape"][1] == 4


# --- 2. validation before any work: an existing finished bundle stays byte for byte ---------------------------


def test_bad_eval_folder_fails_before_work_and_keeps_the_bundle(dpu_bundle, tiny_dataset, capsys):
    before = snapshot(dpu_bundle.parent)
    code, _, err = run(export_main, [*DPU_ARGS, "--calib", str(tiny_dataset), "--eval", "/typo",
                                     "--out", str(dpu_bundle.parent)], capsys)
    assert code == 2
    assert_one_error(err, "--eval /typo is not a folder")
    assert "weights:" not in err  # nothing was loaded
    assert snapshot(dpu_bundle.parent) == before and not leftovers(dpu_bundle.parent)


def test_finn_negative_fps_fails_in_validation_and_keeps_the_bundle(dpu_bundle, capsys):
    before = snapshot(dpu_bundle.parent)
    code, _, err = run(export_main, ["--target", "finn-kv260", "--fps", "-5", "--out", str(dpu_bundle.parent)], capsys)
    assert code == 2
    assert_one_error(err, "--fps -5: give a positive folding target")
    assert snapshot(dpu_bundle.parent) == before and not leftovers(dpu_bundle.parent)


def test_bad_stop_after_fails_before_the_model_is_loaded(dpu_bundle, capsys):
    before = snapshot(dpu_bundle.parent)
    code, _, err = run(export_main, [*DPU_ARGS, "--stop-after", "quantise", "--out", str(dpu_bundle.parent)], capsys)
    assert code == 2
    assert_one_error(err, "--stop-after quantise: not a step of this target")
    assert "weights:" not in err
    assert snapshot(dpu_bundle.parent) == before


# --- 3. NaN weights -------------------------------------------------------------------------------------------


def test_nan_weight_is_a_failed_verdict_naming_the_tensor(tmp_path, capsys):
    model = tiny_model()
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_checkpoint(model, path)
    code, stdout, err = run(export_main, ["--checkpoint", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 1 and "Traceback" not in err and "error" not in err
    bundle = tmp_path / "out" / ONNX_BUNDLE
    data = manifest(bundle)
    assert data["verdict"]["failed"] == ["finite"] and data["verdict"]["exit_code"] == 1
    assert "head.weight" in data["verdict"]["checks"]["finite"]["detail"]
    steps = data["steps"]
    assert steps[0]["name"] == "export float graph"
    assert steps[1:] and all(s["status"] == "not run" for s in steps[1:])
    summary = [line for line in stdout.splitlines() if "FAILED" in line]
    assert len(summary) == 1 and summary[0].startswith("verdict: FAILED: finite FAILED (non-finite weights: head.weight")
    assert summary[0].endswith("values))"), stdout  # one line, however long
    assert not leftovers(tmp_path / "out")


# --- 4. verdicts per family: a forced rewrite-tolerance failure (exit 1), exit 0, exit 2 ------------------------


@pytest.fixture
def strict_recipes(tmp_path, monkeypatch) -> Path:
    """A user recipe folder (VIDCONV_RECIPES) with an onnx and a dpu target held to a tolerance no float run meets."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "onnx-strict.yaml").write_text("_base_: onnx\ntolerance: 1.0e-12\n")
    (folder / "dpu-strict.yaml").write_text("_base_: dpu-kv260\ntolerance: 1.0e-12\n")
    monkeypatch.setenv("VIDCONV_RECIPES", str(folder))
    return folder


def _assert_exact_failed(bundle: Path, stdout: str) -> None:
    data = manifest(bundle)
    assert data["verdict"]["failed"] == ["exact"]
    assert "relative error over 1e-12" in data["verdict"]["checks"]["exact"]["detail"]
    summary = [line for line in stdout.splitlines() if "FAILED" in line]
    assert len(summary) == 1 and summary[0].startswith("verdict: FAILED: exact FAILED"), stdout
    assert summary[0].endswith("; finite holds"), stdout  # the whole verdict on one line, however long
    steps = {s["name"]: s for s in data["steps"]}
    assert steps["verify rewrite"]["exact"] is False and steps["check operators"]["status"] == "not run"
    assert_complete(bundle)


def test_onnx_rewrite_over_tolerance_exits_1(strict_recipes, ckpt, tmp_path, capsys):
    code, stdout, err = run(export_main, ["--target", "onnx-strict", "--checkpoint", str(ckpt),
                                          "--out", str(tmp_path)], capsys)
    assert code == 1 and "Traceback" not in err
    _assert_exact_failed(tmp_path / "vic-t-onnx-strict", stdout)


def test_dpu_rewrite_over_tolerance_exits_1_and_quantizes_nothing(strict_recipes, tiny_dataset, tmp_path, capsys):
    argv = ["--target", "dpu-strict", *DPU_ARGS[2:], "--calib-clips", "1", "--calib", str(tiny_dataset)]
    code, stdout, err = run(export_main, [*argv, "--out", str(tmp_path)], capsys)
    assert code == 1 and "Traceback" not in err
    bundle = tmp_path / "vic-nano-dpu-dpu-strict"
    _assert_exact_failed(bundle, stdout)
    steps = {s["name"]: s for s in manifest(bundle)["steps"]}
    assert steps["quantize"]["status"] == "not run" and not (bundle / "quant").exists()


def test_onnx_and_dpu_exports_that_hold_exit_0(onnx_bundles, dpu_bundle):
    for bundle in (*onnx_bundles, dpu_bundle):
        data = manifest(bundle)
        assert data["verdict"]["holds"] is True and data["verdict"]["exit_code"] == 0
        assert {"finite", "exact", "compliant"} <= set(data["verdict"]["checks"])
        assert_complete(bundle)
    assert manifest(dpu_bundle)["verdict"]["checks"]["bit_exact"]["holds"] is True


@pytest.mark.parametrize("argv,fragment", [
    (["--target", "onnx", "--image-size", "33"], "--image-size 33: give a multiple of 32"),
    (["--target", "onnx", "--frames", "0"], "--frames 0: give a positive number"),
    (["--target", "onnx", "--allow-unfit"], "--allow-unfit applies to finn-* targets, not onnx"),
    (["--target", "onnx", "--stop-after", "quantize"], "--stop-after quantize: not a step of this target"),
    (["--target", "dpu-kv260", "--calib-clips", "0"], "--calib-clips 0: give 1 to"),
    (["--target", "dpu-kv260", "--calib", "/nonexistent-calib"], "--calib /nonexistent-calib is not a folder"),
    (["--target", "dpu-kv260", "--bits", "w4a4"], "--bits applies to finn-* targets, not dpu-kv260"),
    (["--target", "dpu-kv260", "--start-from", "quantize", "--stop-after", "rewrite"],
     "--stop-after rewrite comes before --start-from quantize"),
    (["--target", "finn-kv260", "--bits", "w9a9"], "bits 'w9a9' not understood"),
    (["--target", "finn-kv260", "--bits", ""], "bits '' not understood"),
    (["--target", "finn-kv260", "--fps", "-5"], "--fps -5: give a positive folding target"),
    (["--target", "finn-kv260", "--fps", "inf"], "--fps inf: give a positive folding target"),
    (["--target", "finn-kv260", "--calib-clips", "0"], "--calib-clips 0: give 1 to"),
    (["--target", "finn-kv260", "--stop-after", "export_float"], "--stop-after export_float: not a step"),
    (["--target", "finn-kv260", "--checkpoint", str(REPO / "models/vic-nano-finn-w4a4.safetensors"), "--bits", "w8a8"],
     "--bits w8a8 conflicts with"),
    (["--target", "onnx", "--checkpoint", str(REPO / "models/vic-nano-finn-w4a4.safetensors")],
     "is a FINN checkpoint"),
    (["--target", "onnx", "--checkpoint", str(REPO / "models")], "is a folder: give the path of a weights file"),
    (["--target", "onnx", "--arch", ""], "unknown architecture ''"),  # was: the default model, silently
    (["--target", "onnx", "--frames", "99999999999999999999"], "--frames 99999999999999999999: give at most"),
    (["--target", "onnx", "--arch", "vic-nano", "--grid", "1000000x1000000"], "holds 1,000,000,000,000 frames"),
], ids=lambda v: v if isinstance(v, str) and not v.startswith("-") else None)
def test_bad_input_per_family_exits_2_and_writes_nothing(argv, fragment, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(export_main, [*argv, "--out", str(out)], capsys)
    assert code == 2 and stdout == ""
    assert_one_error(err, fragment)
    assert not out.exists()


# --- 5. vidconv-check on models it must refuse ------------------------------------------------------------------


def _relu_int16(path: Path) -> Path:
    """Valid ONNX (checker and shape inference accept it) that ONNX Runtime has no kernel for (Relu on int16)."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.INT16, [4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT16, [4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def test_check_model_onnx_runtime_refuses_is_exit_2(tmp_path, capsys):
    model = _relu_int16(tmp_path / "relu16.onnx")
    code, stdout, err = run(check_main, [str(model), "--target", "onnx"], capsys)
    assert code == 2, (stdout, err)  # needs vidconv_deploy/check/validate.py (ONNX Runtime session check)
    assert_one_error(err, "ONNX Runtime", prog="vidconv-check")


@pytest.mark.parametrize("kind,fragment", [("random", "not an ONNX model"), ("folder", "model.onnx"),
                                           ("missing", "no such file")])
def test_check_unreadable_model_is_exit_2(kind, fragment, tmp_path, capsys):
    path = tmp_path / "model.onnx"
    if kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "folder":
        path.mkdir()
    code, _, err = run(check_main, [str(path), "--target", "dpu-kv260"], capsys)
    assert code == 2
    assert_one_error(err, fragment, prog="vidconv-check")  # a folder is named (the message says "no such file")


def test_check_junit_at_a_folder_or_under_a_file_is_exit_2(onnx_bundles, tmp_path, capsys):
    model = onnx_bundles[0] / "early.onnx"
    folder = tmp_path / "report.xml"
    folder.mkdir()
    code, _, err = run(check_main, [str(model), "--target", "onnx", "--junit", str(folder)], capsys)
    assert code == 2
    assert_one_error(err, f"{folder} is a folder", prog="vidconv-check")
    assert list(folder.iterdir()) == [] and not leftovers(tmp_path)
    afile = tmp_path / "afile"
    afile.write_text("keep")
    code, _, err = run(check_main, [str(model), "--target", "onnx", "--junit", str(afile / "sub" / "r.xml")], capsys)
    assert code == 2
    assert_one_error(err, f"cannot use {afile}", prog="vidconv-check")
    assert afile.read_text() == "keep" and not leftovers(tmp_path)


def test_check_finn_target_on_a_standard_onnx_model(onnx_bundles, tmp_path, capsys):
    junit = tmp_path / "r.xml"
    code, stdout, err = run(check_main, [str(onnx_bundles[0] / "deploy.onnx"), "--target", "finn-kv260", "--json",
                                         "--junit", str(junit)], capsys)
    assert code in (0, 1) and "error" not in err and "Traceback" not in err
    result = json.loads(stdout)
    assert result["compliant"] is (code == 0)
    ET.parse(junit)


# --- 6. --out that cannot be used ------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["a-file", "under-a-file", "/proc/vidconv"])
def test_unusable_out_is_exit_2_before_any_work(where, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    out = {"a-file": afile, "under-a-file": afile / "sub", "/proc/vidconv": Path("/proc/vidconv")}[where]
    code, stdout, err = run(export_main, ["--out", str(out)], capsys)
    assert code == 2 and stdout == ""
    assert_one_error(err, f"--out {out}")
    assert "weights:" not in err
    assert afile.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    assert not Path("/proc/vidconv").exists()


# --- 7. relocatable, modes, determinism ------------------------------------------------------------------------


def _strings(obj):
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _strings(value)
    elif isinstance(obj, str):
        yield obj


def test_bundles_are_relocatable(onnx_bundles, dpu_bundle):
    for bundle in (*onnx_bundles, dpu_bundle):
        absolute = {str(bundle), str(bundle.resolve()), str(bundle.parent), str(bundle.parent.resolve())}
        texts = [p for p in bundle.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES]
        assert any(p.name == "manifest.json" for p in texts)
        for path in texts:
            text = path.read_text(encoding="utf-8", errors="replace")
            assert ".partial" not in text, path
            assert not [a for a in absolute if a in text], path
        data = manifest(bundle)
        for entry in (data["io"], data["artifacts"]):
            for role, art in entry.items():
                for key in ("file", "dir"):
                    if key in art:
                        assert not Path(art[key]).is_absolute() and ".." not in Path(art[key]).parts, (role, art[key])
                        assert (bundle / art[key]).exists(), (role, art[key])
                assert not [s for s in _strings(art) if s.startswith("/")], role
        assert not leftovers(bundle.parent)


def _assert_modes(bundle: Path, mask: int) -> None:
    for path in [bundle, *bundle.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_dir():
            assert mode == 0o777 & ~mask, (path, oct(mode))
        elif path.suffix in (".sh",) or path.name == "run_xmodel.py":  # the scripts a user runs
            assert mode == 0o777 & ~mask, (path, oct(mode))
        else:
            assert mode == 0o666 & ~mask, (path, oct(mode))


def test_files_keep_the_umask_mode(onnx_bundles, dpu_bundle):
    _assert_modes(onnx_bundles[0], 0o022)  # 0o644 files
    _assert_modes(onnx_bundles[1], 0o002)  # 0o664 files: the group sharing a build folder can update it
    _assert_modes(dpu_bundle, 0o002)
    assert stat.S_IMODE((onnx_bundles[0] / "deploy.onnx").stat().st_mode) == 0o644
    assert stat.S_IMODE((dpu_bundle / "compile" / "compile.sh").stat().st_mode) == 0o775


def test_same_export_twice_is_byte_identical(onnx_bundles):
    first, second = onnx_bundles
    for name in ("float.onnx", "deploy.onnx", "early.onnx", "later.onnx", "compliance.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    a, b = manifest(first), manifest(second)
    assert a["verification"] == b["verification"] and a["io"] == b["io"]
    assert {k: v["sha256"] for k, v in a["artifacts"].items()} == {k: v["sha256"] for k, v in b["artifacts"].items()}


# --- 8. kill -9 mid-export ---------------------------------------------------------------------------------------


def signal_mid_export(out: Path, ckpt: Path, sig: signal.Signals) -> tuple[subprocess.Popen, Path]:
    """Start vidconv-export into ``out``, send ``sig`` once its staging folder exists; the process (ended) and
    that folder."""
    proc = subprocess.Popen([str(BIN / "vidconv-export"), "--checkpoint", str(ckpt), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    staging: list[Path] = []
    deadline = time.monotonic() + 300
    try:
        while not staging and proc.poll() is None and time.monotonic() < deadline:
            staging = list(out.glob(f".{ONNX_BUNDLE}.{proc.pid}.*.partial"))
            time.sleep(0.005)
        if staging:
            proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert staging, "the export ended before its staging folder was seen"
    return proc, staging[0]


def test_kill_9_mid_export_keeps_the_finished_bundle(onnx_bundles, ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(onnx_bundles[0].parent, out)
    before = snapshot(out / ONNX_BUNDLE)
    proc, staging = signal_mid_export(out, ckpt, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert snapshot(out / ONNX_BUNDLE) == before  # the finished bundle, byte for byte
    assert staging.exists()  # the killed run's staging folder, left behind

    code, _, err = run(export_main, ["--checkpoint", str(ckpt), "--out", str(out)], capsys)
    assert code == 0, err
    assert not staging.exists() and not leftovers(out)
    assert sorted(p.name for p in out.iterdir()) == [ONNX_BUNDLE]
    assert_complete(out / ONNX_BUNDLE)
    assert manifest(out / ONNX_BUNDLE)["created"] >= manifest(onnx_bundles[0])["created"]


def test_sigterm_mid_export_removes_its_staging_folder(onnx_bundles, ckpt, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(onnx_bundles[0].parent, out)
    before = snapshot(out / ONNX_BUNDLE)
    proc, staging = signal_mid_export(out, ckpt, signal.SIGTERM)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr.read()
    assert not staging.exists() and not leftovers(out)
    assert snapshot(out / ONNX_BUNDLE) == before


def test_bundle_moved_aside_by_a_killed_swap_comes_back(onnx_bundles, ckpt, tmp_path, capsys):
    """A kill between the swap's two renames leaves the old bundle under its aside name and nothing at its place;
    the next run puts it back before it starts (and so a --start-from finds it)."""
    out = tmp_path / "out"
    shutil.copytree(onnx_bundles[0].parent, out)
    before = snapshot(out / ONNX_BUNDLE)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside = out / f".{ONNX_BUNDLE}.{int(dead.stdout)}.old.abcd1234"
    os.rename(out / ONNX_BUNDLE, aside)
    code, _, err = run(export_main, ["--checkpoint", str(ckpt), "--start-from", "check_operators", "--out", str(out)],
                       capsys)
    assert code == 0, err
    assert not aside.exists() and not leftovers(out)
    after = snapshot(out / ONNX_BUNDLE)
    assert {k: v for k, v in after.items() if k != "manifest.json"} == {k: v for k, v in before.items()
                                                                           if k != "manifest.json"}
