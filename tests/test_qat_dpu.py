"""DPU QAT (``vidconv-finetune --qat --qat-target dpu-<board>``): the trained model is the integer graph the
DPU export writes and the integer reference runs, bit for bit; its positions obey the shift rules; QAT lowers
the INT8 error; flags that cannot work are one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml

from vidconv_deploy.checkpoints import load_model, save_checkpoint
from vidconv_deploy.cli.export import main as export_main
from vidconv_deploy.cli.finetune import main as finetune_main
from vidconv_deploy.errors import UserError
from vidconv_deploy.fixpoint import arithmetic as fixpoint
from vidconv_deploy.models.vidconv import build_model
from vidconv_deploy.onnx_session import run_onnx
from vidconv_deploy.quant import qat_dpu
from vidconv_deploy.quant.graph import analyse
from vidconv_deploy.reference.executor import run_reference
from vidconv_deploy.runners.streaming import collage
from vidconv_deploy.targets.registry import get_target

SIZE = (32, 32)


def tiny_student(seed: int = 0) -> torch.nn.Module:
    """vic-nano-dpu at 32x32, 10 classes, with BatchNorm statistics and scales far from identity."""
    torch.manual_seed(seed)
    model = build_model("vic-nano-dpu", num_classes=10, image_size=SIZE)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gamma" in name:
                p.fill_(0.5)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory, tiny_dataset) -> dict[str, Path]:
    """One epoch of DPU QAT through the CLI, then the DPU export of its checkpoint up to the quantize step."""
    tmp = tmp_path_factory.mktemp("qat-dpu")
    torch.manual_seed(0)
    save_checkpoint(build_model("vic-nano", num_classes=10, image_size=SIZE), tmp / "teacher.safetensors")
    save_checkpoint(tiny_student(), tmp / "init.safetensors")
    out = tmp / "qat.safetensors"
    assert finetune_main(["--qat", "--qat-target", "dpu-kv260", "--teacher", str(tmp / "teacher.safetensors"),
                          "--init", str(tmp / "init.safetensors"), "--clips", str(tiny_dataset), "--epochs", "1",
                          "--batch", "10", "--out", str(out)]) == 0
    assert export_main(["--target", "dpu-kv260", "--checkpoint", str(out), "--calib", str(tiny_dataset), "--calib-clips", "2",
                        "--stop-after", "quantize", "--out", str(tmp / "bundle")]) == 0
    return {"checkpoint": out, "bundle": tmp / "bundle" / "vic-nano-dpu-dpu-kv260"}


def qat_model(checkpoint: Path) -> qat_dpu.DpuQatModel:
    model, _ = load_model(checkpoint)
    found = qat_dpu.read_qat_positions(checkpoint)
    assert found is not None
    target, positions = found
    return qat_dpu.DpuQatModel(model.eval(), get_target(target).passes(), positions)


def test_qat_export_equals_the_integer_reference_bit_for_bit(qat_run):
    """The trained model's fake-quant forward = the bundle's QDQ graphs run by the integer reference (DPU rounding)
    and by ONNX Runtime (half-even rounding, the QAT forward switched to it), on both streaming graphs."""
    qat = qat_model(qat_run["checkpoint"])
    quant = {g: onnx.load(str(qat_run["bundle"] / "quant" / f"{g}.onnx")) for g in qat_dpu.GRAPH_IO}
    clip = np.random.RandomState(3).randn(9, 3, *SIZE).astype(np.float32) * 1.5
    frames = [{"frame": clip[i:i + 1]} for i in range(9)]
    for rounding, reference in (("half_up", "dpu"), ("half_even", "onnxruntime")):
        qat.rounding = rounding
        with torch.no_grad():
            features = qat.early(torch.from_numpy(clip)).numpy()
            logits = qat(torch.from_numpy(clip)[None]).numpy()
        ref_features = np.concatenate([run_reference(quant["early"], f, rounding=reference).outputs["features"] for f in frames])
        ref_logits = run_reference(quant["later"], {"collage": collage(ref_features, (3, 3))}, rounding=reference).outputs["logits"]
        assert np.array_equal(features, ref_features), rounding
        assert np.array_equal(logits, ref_logits), rounding
        assert np.any(logits != 0)
        if reference == "onnxruntime":
            ort_features = np.concatenate([run_onnx(quant["early"], f)[0] for f in frames])
            assert np.array_equal(ort_features, features)
            assert np.array_equal(run_onnx(quant["later"], {"collage": collage(ort_features, (3, 3))})[0], logits)


def test_the_exported_float_graphs_hold_the_trained_weights_exactly(qat_run):
    """vidconv-export rebuilds from the checkpoint the very float weights QAT trained (identity form folds exactly)."""
    qat = qat_model(qat_run["checkpoint"])
    for graph in qat_dpu.GRAPH_IO:
        exported = analyse(onnx.load(str(qat_run["bundle"] / f"{graph}.onnx")))
        trained, plan = qat.graph_weights(graph), qat.graphs[graph].plan
        convs = {node: (w, b) for node, w, b in qat_dpu.conv_parameters(exported)}
        for node, weight, bias in qat_dpu.conv_parameters(plan):
            assert np.array_equal(trained[weight].detach().numpy(), exported.initializers[convs[node][0]]), node
            if bias is not None:
                assert np.array_equal(trained[bias].detach().numpy(), exported.initializers[convs[node][1]]), node


def test_the_export_pins_every_position_and_the_shift_rules_hold(qat_run):
    info = json.loads((qat_run["bundle"] / "quant_info.json").read_text())
    _, positions = qat_dpu.read_qat_positions(qat_run["checkpoint"])
    manifest = json.loads((qat_run["bundle"] / "manifest.json").read_text())
    quantize = next(s for s in manifest["steps"] if s["name"] == "quantize") if isinstance(manifest["steps"], list) \
        else manifest["steps"]["quantize"]
    assert quantize["qat"]["trained_for"] == "dpu-kv260"
    for graph in qat_dpu.GRAPH_IO:
        g = info[graph]
        assert g["qat"]["checkpoint"] == str(qat_run["checkpoint"])
        plan = analyse(onnx.load(str(qat_run["bundle"] / f"{graph}.onnx")))
        assert qat_dpu.GraphPositions.from_quant_info(plan, g) == positions[graph]
        assert g["onnx"]["adjustments"] == []  # nothing moved: the QAT positions already obey vai_q's rules
        for conv in g["onnx"]["convs"].values():
            assert fixpoint.SHIFT_CUT_MIN <= conv["shift_cut"] <= fixpoint.SHIFT_CUT_MAX
            if conv["shift_bias"] is not None:
                assert min(0, -(24 - (8 + conv["shift_cut"]))) <= conv["shift_bias"] <= fixpoint.SHIFT_BIAS_MAX
    card = yaml.safe_load(qat_run["checkpoint"].with_suffix(".yaml").read_text())
    assert card["qat"]["target"] == "dpu-kv260"
    assert card["made_with"].startswith("vidconv-finetune --teacher")


def test_identity_form_computes_what_the_model_computes():
    model = tiny_student(1)
    folded = qat_dpu.identity_form(model)
    clips = torch.randn(2, 9, 3, *SIZE)
    with torch.no_grad():
        want, got = model(clips), folded(clips)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
    for m in folded.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.equal(m.weight / torch.sqrt(m.running_var + m.eps), torch.ones_like(m.weight))
            assert not m.running_mean.any()


def sqnr_db(got: torch.Tensor, want: torch.Tensor) -> float:
    return 10 * float(torch.log10((want**2).sum() / ((got - want) ** 2).sum()))


def test_a_short_qat_run_lowers_the_int8_error():
    """Ten Adam steps on two clips, through the frozen-position INT8 graphs, raise the logits' SQNR against the
    float model they started from (step 0 is the calibrated-only INT8 model). BatchNorm variances spread over four
    decades make per-tensor weight positions lose accuracy, as a trained depthwise conv's channels do."""
    student = tiny_student(2)
    with torch.no_grad():
        for m in student.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.copy_(10 ** torch.empty_like(m.running_var).uniform_(-2, 2, generator=torch.Generator().manual_seed(7)))
        student.head.weight.mul_(30)  # logits of order one, not of the classifier init's 0.01
    float_model = qat_dpu.identity_form(student)
    passes = get_target("dpu-kv260").passes()
    clips = torch.randn(2, 9, 3, *SIZE, generator=torch.Generator().manual_seed(4))
    positions = qat_dpu.calibrated_positions(float_model, passes, [c.numpy() for c in clips])
    with torch.no_grad():
        want = float_model(clips)
    qat = qat_dpu.DpuQatModel(qat_dpu.identity_form(float_model), passes, positions)
    with torch.no_grad():
        before = sqnr_db(qat(clips), want)
    optimizer = torch.optim.Adam([p for p in qat.parameters() if p.requires_grad], lr=1e-5)
    for _ in range(10):
        loss = torch.nn.functional.mse_loss(qat(clips), want)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = sqnr_db(qat(clips), want)
    assert 24.5 < before < 25.5  # calibrated only: 25.0 dB
    assert after > before + 3.0, (before, after)  # 30.5 dB after ten steps


def test_positions_of_another_graph_are_refused():
    plan = analyse(qat_dpu.streaming_graphs(qat_dpu.identity_form(tiny_student()), get_target("dpu-kv260").passes())["later"])
    positions = qat_dpu.GraphPositions({k: 4 for k in plan.points}, {n: 6 for n, _, _ in qat_dpu.conv_parameters(plan)}, {})
    assert len(qat_dpu.pinned_fix_points(plan, positions)) > len(plan.points)
    del positions.activations[next(iter(plan.points))]
    with pytest.raises(UserError, match="^the checkpoint's DPU QAT positions do not fit this graph"):
        qat_dpu.pinned_fix_points(plan, positions)


@pytest.mark.parametrize("argv, message", [
    (["--qat-target", "dpu-kv260"], "--qat-target dpu-kv260 only applies to --qat: add --qat, or drop --qat-target"),
    (["--qat", "--qat-target", "dpu-kv260", "--bits", "w4a4"],
     "--bits w4a4 only applies to --qat of the FINN variant (DPU INT8 is 8-bit): drop --bits"),
    (["--student", "vic-nano-dpu", "--bits", "w8a8"],
     "--bits w8a8 only applies to --qat of the FINN variant (DPU INT8 is 8-bit): drop --bits, or add --qat"),
    (["--qat", "--qat-target", "finn-kv260"], "--qat-target finn-kv260 is not finn or a DPU target: use finn or one of "),
])
def test_dpu_qat_flag_errors(argv, message, capsys, tmp_path):
    assert finetune_main(["--teacher", str(tmp_path / "t.safetensors"), "--clips", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_layernorm_model_cannot_be_dpu_qat_trained():
    with pytest.raises(UserError, match="^DPU QAT needs a BatchNorm variant"):
        qat_dpu.identity_form(build_model("vic-nano", num_classes=10, image_size=SIZE))


def test_recovery_on_a_qat_checkpoint_is_refused(qat_run, tiny_dataset, tmp_path, capsys):
    assert export_main(["--target", "dpu-kv260", "--checkpoint", str(qat_run["checkpoint"]), "--calib", str(tiny_dataset),
                        "--calib-clips", "1", "--quant-recovery", "bias_correction", "--stop-after", "quantize",
                        "--out", str(tmp_path)]) == 2
    assert "is a DPU QAT checkpoint, exported at its trained fix positions: drop --quant-recovery bias_correction" \
        in capsys.readouterr().err
