"""Issue 12: vidconv-export and vidconv-check on arbitrary command lines end in 0, 1 or 2, never a traceback.

The argv are drawn from a vocabulary of every flag with good and bad values (negative, zero, huge,
non-numeric, missing files, typos of targets, unicode). Exports stop after ``export_float`` (which
also makes every FINN target exit 2 at once: it is not a FINN step), so valid combinations stay cheap.
The examples are derandomized: the suite runs the same argv every time.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import onnx
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from vidconv_deploy import build_model, save_checkpoint
from vidconv_deploy.cli.check import main as check_main
from vidconv_deploy.cli.export import main as export_main

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_dataset) -> dict[str, str]:
    """Inputs the vocabulary names: a tiny checkpoint, a small valid .onnx, random bytes, a folder, a missing path."""
    root = tmp_path_factory.mktemp("fuzz-inputs")
    tiny = build_model("vic-t", num_classes=5, image_size=32, frames=4, dims=(8, 16, 24, 32), depths=(1, 1, 2, 1),
                       neck_dim=40)
    save_checkpoint(tiny, root / "tiny.safetensors")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"], name="relu")], "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], torch.randn(108).tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, root / "small.onnx")
    (root / "random.bin").write_bytes(os.urandom(2048))
    (root / "empty.onnx").write_bytes(b"")
    (root / "folder").mkdir()
    (root / "arch.json").write_text('{"fingerprint": "0x101000016010406"}')
    return {"archjson": str(root / "arch.json"), "ckpt": str(root / "tiny.safetensors"), "onnx": str(root / "small.onnx"), "random": str(root / "random.bin"),
            "empty": str(root / "empty.onnx"), "folder": str(root / "folder"), "missing": str(root / "missing.pth"),
            "data": str(tiny_dataset), "finn": str(REPO / "models/vic-nano-finn-w4a4.safetensors"),
            "unicode": str(root / "vidéo ✓ 模型.pth")}


def invoke(main, argv: list[str]) -> tuple[int, str, str]:
    """A command in-process with its output captured (argparse's own exit counts as a return)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def assert_ended_well(prog: str, code: int, err: str, argv: list[str]) -> None:
    assert code in (0, 1, 2), (argv, code, err[-2000:])
    assert "Traceback" not in err, (argv, err[-2000:])
    if code == 2:
        last = err.strip().splitlines()[-1] if err.strip() else ""
        assert last.startswith(f"{prog}: error: "), (argv, err[-2000:])


# --- vidconv-export ------------------------------------------------------------------------------------------

TARGETS = ["onnx", "dpu-kv260", "dpu-zcu104", "finn-kv260", "finn-pynq-z2", "onnxx", "dpu-kv26", "DPU-KV260", "finn",
           "", "ønnx", "dpu-kv260 "]


def export_vocabulary(files: dict[str, str]) -> tuple[list[list[str]], list[list[str]]]:
    """Every vidconv-export flag: (well-formed values, bad values); ``@name`` is replaced by a path from ``files``."""
    good: list[list[str]] = [["--json"], ["--no-neck"], ["--allow-unfit"], ["--list-targets"]]
    good += [["--target", t] for t in ("onnx", "onnx", "dpu-kv260", "dpu-zcu104", "finn-kv260")]
    good += [["--arch", a] for a in ("vic-nano", "vic-nano-dpu")]
    good += [["--checkpoint", "@ckpt"], ["--frames", "4"], ["--frames", "9"], ["--classes", "10"],
             ["--image-size", "32"], ["--image-size", "64"], ["--grid", "2x2"], ["--grid", "3x3"], ["--calib", "@data"],
             ["--eval", "@data"], ["--calib-clips", "1"], ["--bits", "w4a4"], ["--fps", "30"],
             ["--start-from", "export_float"], ["--stop-after", "rewrite"], ["--dpu-arch", "B3136"],
             ["--fingerprint", "0x101000016010406"], ["--arch-json", "@archjson"], ["--crosscheck", "quark"],
             ["--quant-recovery", "none"], ["--quant-recovery", "bias_correction"]]
    bad: list[list[str]] = [["-h"], ["--bogus-flag"], ["positional"], ["--target"]]
    bad += [["--target", t] for t in TARGETS[5:]]
    bad += [["--arch", a] for a in ("vic-z", "VIC-NANO", "vic-nanö", "")]
    bad += [["--checkpoint", f"@{k}"] for k in ("missing", "random", "folder", "finn", "unicode", "empty")]
    bad += [["--frames", n] for n in ("-1", "0", "99999999999999999999", "1e3", "abc", "", "٣", "nan")]
    bad += [["--classes", n] for n in ("-3", "0", "99999999999999999999", "x")]
    bad += [["--image-size", n] for n in ("33", "0", "-64", "1048576", "sixty-four")]
    bad += [["--grid", g] for g in ("2x3", "0x3", "axb", "3", "1000000x1000000", "2x2x2", "-2x-2")]
    bad += [["--calib", f"@{k}"] for k in ("missing", "random", "folder")]
    bad += [["--eval", f"@{k}"] for k in ("missing", "random", "folder")]
    bad += [["--calib-clips", n] for n in ("0", "-1", "99999999999", "one")]
    bad += [["--bits", b] for b in ("w8a8", "w9a9", "w1a1", "", "4", "wa")]
    bad += [["--fps", f] for f in ("-5", "0", "nan", "inf", "-inf", "1e308", "fast")]
    bad += [["--start-from", s] for s in ("rewrite", "quantize", "bogus")]
    bad += [["--stop-after", s] for s in ("bogus", "finn_model")]
    bad += [["--dpu-arch", a] for a in ("B9999", "", "b4096x")]
    bad += [["--fingerprint", f] for f in ("0x", "zz", "0x1", "-1")]
    bad += [["--arch-json", f"@{k}"] for k in ("missing", "random", "folder", "empty")]
    bad += [["--crosscheck", c] for c in ("QUARK", "vai_q", "")]
    bad += [["--quant-recovery", r] for r in ("adaround", "BIAS_CORRECTION", "")]
    resolve = lambda choices: [[files[c[1:]] if c.startswith("@") else c for c in choice] for choice in choices]  # noqa: E731
    return resolve(good), resolve(bad)


@given(data=st.data())
@FUZZ
def test_export_fuzz_ends_in_0_1_or_2_without_traceback(files, data):
    good, bad = export_vocabulary(files)
    picked = data.draw(st.lists(st.sampled_from(good), max_size=4), label="good flags")
    picked += data.draw(st.lists(st.sampled_from(bad), max_size=1), label="bad flag")
    picked = data.draw(st.permutations(picked), label="order")
    argv = [token for choice in picked for token in choice]
    # Cheap when valid: one calibration clip for a DPU target (a drawn --calib-clips comes later and wins), and no
    # FINN step runs (export_float is not one of them).
    cheap = ["--calib-clips", "1"] if any(t.startswith("dpu-") for t in argv) else []
    with tempfile.TemporaryDirectory(prefix="vidconv-fuzz-") as tmp:
        out = Path(tmp) / "out"
        full = [*cheap, *argv, "--out", str(out), "--stop-after", "export_float"]
        code, stdout, err = invoke(export_main, full)
        event(f"exit {code}")
        if code == 2:
            event("error: " + err.strip().splitlines()[-1].split(":")[2][:40] if err.strip() else "silent")
        assert_ended_well("vidconv-export", code, err, full)
        if out.exists():
            left = [p.name for p in out.iterdir() if p.name.startswith(".")]
            assert not left, (full, left)  # no staging folder, no temporary file
            if code == 2:  # bad input or a tool error: no bundle
                assert not [p for p in out.iterdir() if (p / "manifest.json").exists()], full
        if code in (0, 1) and "--json" in argv and "--list-targets" not in argv and "-h" not in argv:
            assert json.loads(stdout)["verdict"]["exit_code"] == code


# --- vidconv-check -------------------------------------------------------------------------------------------


def check_vocabulary(files: dict[str, str], tmp: Path) -> dict[str, list[list[str]]]:
    afile = tmp / "afile"
    afile.write_text("keep")
    (tmp / "adir").mkdir(exist_ok=True)
    return {
        "model": [[files[k]] for k in ("onnx", "onnx", "random", "empty", "folder", "missing", "unicode", "ckpt")] + [[]],
        "flags": [["--target", t] for t in TARGETS] + [["--json"], ["--bogus"], ["-h"]]
        + [["--junit", str(p)] for p in (tmp / "r.xml", tmp / "adir", afile / "r.xml", tmp / "new" / "r.xml")],
    }


@given(data=st.data())
@FUZZ
def test_check_fuzz_ends_in_0_1_or_2_without_traceback(files, data):
    with tempfile.TemporaryDirectory(prefix="vidconv-fuzz-") as tmp:
        vocabulary = check_vocabulary(files, Path(tmp))
        model = data.draw(st.sampled_from(vocabulary["model"]), label="model")
        flags = data.draw(st.lists(st.sampled_from(vocabulary["flags"]), max_size=3), label="flags")
        target = data.draw(st.sampled_from([[], ["--target", "onnx"], ["--target", "dpu-kv260"],
                                            ["--target", "finn-kv260"]]), label="target")
        argv = [*model, *target, *[token for flag in flags for token in flag]]
        code, stdout, err = invoke(check_main, argv)
        event(f"exit {code}")
        assert_ended_well("vidconv-check", code, err, argv)
        assert (Path(tmp) / "afile").read_text() == "keep"
        assert not [p for p in Path(tmp).rglob(".*") if p.name.endswith(".tmp")], argv
        if code in (0, 1) and "--json" in argv and "-h" not in argv:
            assert json.loads(stdout)["compliant"] is (code == 0)


def test_fuzz_vocabulary_covers_every_export_flag(files):
    """A flag added to vidconv-export must be added to the vocabulary (or the fuzzing silently skips it)."""
    from vidconv_deploy.cli.export import build_parser

    flags = {a.option_strings[-1] for a in build_parser()._actions if a.option_strings}
    drawn = {choice[0] for choices in export_vocabulary(files) for choice in choices}
    assert flags - {"--out", "--help"} <= drawn, flags - drawn
