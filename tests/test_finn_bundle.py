"""``vidconv-export --target finn-<board>`` end to end on vic-nano: artifacts, manifest, report, build configs,
the bit-exact chain on real clips, accuracy of the float and FINN models, and the CLI's errors."""

from __future__ import annotations

import json

import pytest
import numpy as np
import torch

pytest.importorskip("finn", reason="finn-plus not installed (scripts/finn-install.sh)")

from finn.builder.build_dataflow_config import DataflowBuildConfig, default_build_dataflow_steps  # noqa: E402

from vidconv_deploy import build_model, load_model  # noqa: E402
from vidconv_deploy.cli.evaluate import main as eval_main  # noqa: E402
from vidconv_deploy.cli.export import main as export_main  # noqa: E402
from vidconv_deploy.errors import UserError  # noqa: E402
from vidconv_deploy.finn.boards import RESOURCES  # noqa: E402
from vidconv_deploy.finn.checkpoint import load_finn_checkpoint, save_finn_checkpoint  # noqa: E402
from vidconv_deploy.finn.model import value  # noqa: E402
from vidconv_deploy.finn.pipeline import export_qonnx, prepare_model  # noqa: E402

ROLES = {f"{kind}_{graph}" for kind in ("qonnx", "finn_streamlined", "finn_dataflow", "folding_config")
         for graph in ("early", "later")} | {"finn_report", "finn_log", "finn_build", "finn_checkpoint", "float_checkpoint",
                                                    "compliance_json",
                                                    "report", "report_html", "report_files"}
FINN_ROW = "FINN w4a4 (Brevitas, bit-exact with the accelerator)"


@pytest.fixture(scope="module")
def nano(tmp_path_factory, tiny_dataset, monkeypatch_module):
    """vic-nano-dpu (random init) exported for finn-kv260 at w4a4 through the CLI, calibrated and scored on
    real clips, no --fps, on a machine without Vivado."""
    monkeypatch_module.delenv("XILINX_VIVADO", raising=False)
    out = tmp_path_factory.mktemp("bundle")
    code = export_main(["--target", "finn-kv260", "--arch", "vic-nano-dpu", "--classes", "10", "--calib",
                        str(tiny_dataset), "--calib-clips", "2", "--eval", str(tiny_dataset), "--out", str(out)])
    bundle = out / "vic-nano-dpu-finn-kv260"
    manifest = json.loads((bundle / "manifest.json").read_text())
    return code, bundle, manifest


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_bundle_artifacts_and_manifest(nano):
    code, out, manifest = nano
    assert code == 0
    assert set(manifest["artifacts"]) == ROLES
    for role, art in manifest["artifacts"].items():
        assert (out / art.get("file", art.get("dir", ""))).exists(), role
    steps = {s["name"]: s for s in manifest["steps"]}
    assert steps["finn build"]["status"] == "not run" and "no Vivado" in steps["finn build"]["reason"]
    assert manifest["finn"]["bitfile"].startswith("not built")
    assert all(steps[f"{s} {g}"]["status"] == "ran" for s in ("streamline", "dataflow", "estimate") for g in ("early", "later"))
    assert manifest["io"]["finn_dataflow_later"]["output"]["datatype"] == "INT8"


def test_report_has_the_issue_fields(nano):
    _, out, manifest = nano
    report = json.loads((out / "finn_report.json").read_text())
    assert {"unmapped_nodes", "fps", "latency_ms", "resources", "board", "utilization", "fits"} <= set(report)
    assert report["unmapped_nodes"] == []
    assert set(report["resources"]) == set(RESOURCES) == set(report["utilization"])
    assert report["board"]["part"] == "xck26-sfvc784-2LV-c" and report["board"]["budget"]["DSP"] == 1248
    budget = report["board"]["budget"]
    within = all(report["resources"][k] is None or report["resources"][k] <= budget[k] for k in RESOURCES)
    assert report["fits"] == within
    assert report["fps"] > 0 and report["latency_ms"] > 0
    # vic-nano's 4-bit weights (6.5 Mbit) exceed the K26's BRAM (5.2 Mbit): the large ones go to URAM, and it fits
    assert report["fits"] and report["resources"]["URAM"] > 0
    assert any("to URAM" in note for note in report["folding"]["notes"]["later"])
    assert report["tools"]["finn-plus"] == "1.6.1" and report["tools"]["vivado"] == "not used"
    assert report["folding"]["policy"].startswith("no --fps")


def test_bit_exact_chain_on_real_clips(nano):
    _, out, _ = nano
    chain = json.loads((out / "finn_report.json").read_text())["chain"]
    assert chain["bit_exact"] and chain["mismatches"] == [] and chain["clips"] == 2
    assert all(all(agree.values()) for agree in chain["agree"].values())
    assert all(line.split(": ")[1].startswith("qonnx") and line.endswith("by up to 1 LSB")
               for line in chain["qonnx_float32_rounding"])  # float32 QONNX execution: at most 1 LSB off, and counted


def test_build_configs_are_dataflow_build_configs(nano):
    _, out, _ = nano
    fields = set(DataflowBuildConfig.__dataclass_fields__)
    for graph in ("early", "later"):
        config = json.loads((out / "finn_build" / f"{graph}.json").read_text())
        assert set(config) <= fields
        assert set(config["steps"]) <= set(default_build_dataflow_steps)
        assert config["board"] == "KV260_SOM" and "bitfile" in config["generate_outputs"]
        assert (out / "finn_build" / config["folding_config_file"]).resolve() == (out / f"folding_config_{graph}.json").resolve()
    script = (out / "finn_build" / "build.sh").read_text()
    assert "finn build early.json ../finn_dataflow_early.onnx" in script


def test_markdown_report_has_fit_table_cycles_plots_and_accuracy(nano):
    _, out, manifest = nano
    text = (out / "report.md").read_text()
    assert manifest["finn"]["board"] == "kv260"
    assert "## Fit on kv260 (xck26-sfvc784-2LV-c)" in text and "| BRAM_18K |" in text and "## Accuracy" in text
    assert "Bit-exact chain" in text and "bit-exact on 2 clips" in text and "QONNX execution (float32" in text
    assert "## Per-layer error, w4a4 vs float" in text and "report_files/sqnr_finn.png" in text
    assert (out / "report_files" / "sqnr_finn.png").read_bytes()[:4] == b"\x89PNG"
    for graph in ("early", "later"):
        assert (out / "report_files" / f"finn_cycles_{graph}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"report_files/finn_cycles_{graph}.png" in text


def test_design_that_does_not_fit_exits_1_unless_accepted(nano, tiny_dataset, tmp_path):
    """--start-from dataflow refolds a finished bundle for --fps 1000 (LUT over the K26's budget): the verdict fits
    fails (exit 1); --start-from finn_report --allow-unfit accepts it (exit 0). The steps before keep their records."""
    import shutil

    _, out, manifest = nano
    shutil.copytree(out.parent, tmp_path / "out")
    argv = ["--target", "finn-kv260", "--arch", "vic-nano-dpu", "--classes", "10", "--calib", str(tiny_dataset),
            "--calib-clips", "2", "--out", str(tmp_path / "out"), "--fps", "1000"]
    assert export_main([*argv, "--start-from", "dataflow"]) == 1
    bundle = tmp_path / "out" / out.name
    again = json.loads((bundle / "manifest.json").read_text())
    assert again["verdict"]["failed"] == ["fits"] and "LUT" in again["verdict"]["checks"]["fits"]["detail"]
    assert again["steps"][:4] == manifest["steps"][:4]  # carried over, not rerun
    assert json.loads((bundle / "finn_report.json").read_text())["folding"]["target_fps"] == 1000
    assert export_main([*argv, "--start-from", "finn_report", "--allow-unfit"]) == 0
    accepted = json.loads((bundle / "manifest.json").read_text())["verdict"]
    assert accepted["holds"] and accepted["checks"]["fits"] == {**accepted["checks"]["fits"], "holds": False,
                                                                "accepted": True}


@pytest.mark.parametrize(("board", "bits", "message"), [("kv250", "w4a4", "did you mean finn-kv260"),
                                                         ("kv260", "w4", "wXaY")])
def test_bad_arguments(tmp_path, board, bits, message, capsys):
    assert export_main(["--target", f"finn-{board}", "--bits", bits, "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_accuracy_of_float_and_finn_models_in_the_manifest_and_from_vidconv_eval(nano, tiny_dataset):
    _, out, manifest = nano
    rows = {row["model"]: row for row in manifest["accuracy"]}
    assert set(rows) == {"float", FINN_ROW} and rows["float"]["videos"] == 6
    assert rows["float"]["agreement_with_float"] == 100.0
    assert eval_main(["--bundle", str(out), "--data", str(tiny_dataset), "--target", "finn-kv260"]) == 0
    again = {row["model"]: row for row in json.loads((out / "eval.json").read_text())["orders"]["normal"]}
    assert again == rows


def test_finn_checkpoint_round_trip_and_reexport(nano, tmp_path, tiny_dataset):
    """The bundle's FINN model reloads bit for bit and exports again as is (what vidconv-finetune --qat output does)."""
    _, out, _ = nano
    model = load_finn_checkpoint(out / "finn_model.safetensors")
    save_finn_checkpoint(model, tmp_path / "again.safetensors")
    clips = torch.randn(2, 9, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(value(model(clips)), value(load_finn_checkpoint(tmp_path / "again.safetensors")(clips)))
    with pytest.raises(UserError, match="not w8a8: pass --bits w4a4"):
        prepare_model(model, "w8a8", None, 0)
    ready, source, _, facts = prepare_model(load_finn_checkpoint(out / "finn_model.safetensors"), "w4a4", None, 0)
    assert source is None and "used as is" in facts["source"]
    for part in ("early", "later"):  # a freshly loaded Brevitas model exports only after one forward pass
        assert export_qonnx(ready, part, tmp_path).graph.node


@pytest.mark.parametrize(("argv", "message"), [
    (["--target", "finn-kv260", "--bits", "w9a4"], "bits 'w9a4' not understood"),
    (["--target", "dpu-kv260", "--checkpoint", "FINN"], "is a FINN checkpoint"),
])
def test_cli_errors_are_one_line_and_leave_no_bundle(nano, argv, message, tmp_path, capsys):
    _, out, _ = nano
    argv = [str(out / "finn_model.safetensors") if a == "FINN" else a for a in argv]
    assert export_main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists()


def test_streaming_on_brevitas_equals_the_full_clip_model(nano):
    """vidconv-stream's FINN backend (Brevitas in float64, as the chain runs it): each window of the sliding
    window equals the FINN model on the whole clip, bit for bit."""
    import copy

    from vidconv_deploy.stream import open_backend

    _, out, _ = nano
    opened = open_backend(out)
    assert opened.name == "brevitas"
    clip = torch.randn(11, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    recognizer = opened.recognizer(stride=2)
    predictions = [p for p in (recognizer.push(frame) for frame in clip.numpy()) if p is not None]
    assert [(p.first_frame, p.last_frame) for p in predictions] == [(0, 8), (2, 10)]
    model = copy.deepcopy(load_finn_checkpoint(out / "finn_model.safetensors")).eval().double()
    with torch.no_grad():
        for p in predictions:
            expected = value(model(clip[None, p.first_frame:p.last_frame + 1].double())).numpy()[0]
            assert np.array_equal(p.logits, expected)


def test_streaming_on_the_float_pytorch_model_equals_it_on_the_whole_clip(nano):
    from vidconv_deploy.export.onnx_export import relative_error
    from vidconv_deploy.stream import open_backend

    _, out, _ = nano
    recognizer = open_backend(out, "pytorch").recognizer(stride=2)
    clip = torch.randn(11, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    predictions = [p for p in (recognizer.push(frame) for frame in clip.numpy()) if p is not None]
    model = load_model(out / "float_model.safetensors")[0].eval()
    with torch.no_grad():
        for p in predictions:
            assert relative_error(p.logits, model(clip[None, p.first_frame:p.last_frame + 1]).numpy()[0]) <= 1e-5
