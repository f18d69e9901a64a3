"""The FINN variant in PyTorch/Brevitas: bits, the float mapping, calibration, QAT, boards (no finn-plus needed)."""

from __future__ import annotations

import pytest
import torch
import yaml
from brevitas.graph.calibrate import quantization_status_manager

from vidconv_deploy.checkpoints import load_model, save_checkpoint
from vidconv_deploy.cli.export import finn_teacher
from vidconv_deploy.cli.finetune import main as finetune_main
from vidconv_deploy.errors import UserError
from vidconv_deploy.finn.boards import finn_targets, get_board
from vidconv_deploy.finn.checkpoint import load_finn_checkpoint
from vidconv_deploy.finn.layer_error import quantizer_sqnr
from vidconv_deploy.finn.model import Bits, FinnViC, calibrate, from_float, tile_to_collage, value
from vidconv_deploy.models.collage import tile_to_collage as tile_repeat
from vidconv_deploy.models.vidconv import build_model
from vidconv_deploy.models.zoo import shipped_weights
from vidconv_deploy.train.losses import DistillLoss

TINY = {"dims": (8, 16, 16, 32), "depths": (1, 1, 1, 1), "neck_dim": 32}


def float_model(arch: str = "vic-nano-dpu", seed: int = 0, **kw) -> torch.nn.Module:
    """A tiny float model with non-trivial gamma, alpha and BatchNorm statistics (so folding is really tested)."""
    torch.manual_seed(seed)
    model = build_model(arch, **{"num_classes": 4, **TINY, **kw})
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "gamma_tem")):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


def clips(n: int = 2, batch: int = 1, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn((batch, 9, 3, 64, 64), generator=gen) for _ in range(n)]


@pytest.mark.parametrize(("text", "weight", "act"), [("w4a4", 4, 4), ("W8A8", 8, 8), ("w2a6", 2, 6)])
def test_bits_parse(text, weight, act):
    bits = Bits.parse(text)
    assert (bits.weight, bits.act) == (weight, act)
    assert str(bits) == text.lower()


@pytest.mark.parametrize("text", ["w1a4", "w9a9", "4bit", "a4w4", ""])
def test_bits_parse_rejects(text):
    with pytest.raises(UserError, match="wXaY"):
        Bits.parse(text)


@pytest.mark.parametrize("grid", [(2, 2), (3, 3), (2, 3)])
def test_tile_as_upsample_and_shuffle_equals_repeat(grid):
    """The FINN-friendly tile (nearest upsample + permutation) is exactly the authors' repeat."""
    frame = torch.randn(2, 5, 4, 3)
    assert torch.equal(tile_to_collage(frame, grid), tile_repeat(frame, grid))


def test_from_float_folds_gamma_and_alpha_and_copies_norms():
    src = float_model()
    finn = from_float(src, "w4a4")
    block, fblock = src.backbone.stages[2][0], finn.stages[2][0]
    assert torch.equal(fblock.dwconv.weight, block.dwconv.weight)
    assert torch.allclose(fblock.pwconv2.weight, (block.pwconv2.weight * block.gamma[:, None])[:, :, None, None])
    assert torch.allclose(fblock.pwconv2.bias, block.pwconv2.bias * block.gamma)
    assert torch.allclose(fblock.dwconv_tem.weight, block.dwconv_tem.weight * block.gamma_tem.view(-1, 1, 1, 1))
    assert torch.equal(fblock.norm.running_var, block.norm.running_var)
    assert torch.equal(finn.neck.weight, src.neck.conv.weight)
    assert torch.equal(finn.head.bias, src.head.bias)
    assert fblock.dwconv_tem.dilation == (4, 4) and finn.neck.dilation == (2, 2)


def test_finn_variant_with_quantizers_off_is_the_float_dpu_model():
    """All quantizers disabled, the FINN variant computes the float vic-*-dpu model (collage, tile, folds, pool)."""
    src = float_model()
    finn = from_float(src, "w4a4").eval()
    clip = clips(1, batch=2)[0]
    off = quantization_status_manager(finn, disable_act_quant=True, disable_weight_quant=True,
                                      disable_bias_quant=True, call_act_quantizer_impl=False, is_training=False)
    with torch.no_grad(), off:
        got = value(finn(clip))
        want = src(clip)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)


def test_quantized_logits_are_integers_on_the_output_grid():
    finn = calibrate(from_float(float_model(), "w4a4"), clips())
    with torch.no_grad():
        out = finn(clips(1)[0])
    assert out.bit_width.item() == 8
    assert torch.equal(out.int().float() * out.scale, out.value)
    assert finn.pool.trunc_quant.bit_width().item() == 6  # 4-bit act + log2(2x2): FINN's QuantAvgPool2d width


def test_calibrate_keeps_batchnorm_statistics_unless_asked():
    src = float_model()
    finn = from_float(src, "w4a4")
    calibrate(finn, clips())
    assert torch.equal(finn.stages[0][0].norm.running_mean, src.backbone.stages[0][0].norm.running_mean)
    calibrate(finn, clips(), reestimate_bn=True)
    assert not torch.equal(finn.stages[0][0].norm.running_mean, src.backbone.stages[0][0].norm.running_mean)
    assert finn.stages[0][0].norm.momentum == 0.1 and not finn.training


def test_from_faithful_model_maps_layernorm_affine():
    src = float_model("vic-nano")
    finn = from_float(src, "w8a8")
    assert finn.cfg.norm == "batch" and finn.cfg.act == "relu"
    assert torch.equal(finn.stages[1][0].norm.weight, src.backbone.stages[1][0].norm.weight)
    assert torch.equal(finn.stem_norm.running_var, torch.ones_like(finn.stem_norm.running_var))


def test_wrong_clip_shape_is_a_user_error():
    finn = FinnViC(float_model().cfg, Bits(4, 4))
    with pytest.raises(UserError, match=r"expected \(batch, 9, 3, 64, 64\)"):
        finn(torch.zeros(1, 8, 3, 64, 64))


def test_qat_loss_is_zero_for_identical_logits_and_ce_with_labels():
    """The loss vidconv-finetune --qat trains with: KL on logits, plus full-weight cross-entropy on labels."""
    qat_loss = DistillLoss(label_weight=1.0)
    logits = torch.randn(3, 4)
    assert qat_loss(logits, logits).item() == pytest.approx(0.0, abs=1e-7)
    labels = torch.tensor([0, 1, 2])
    expected = torch.nn.functional.cross_entropy(logits, labels)
    assert qat_loss(logits, logits, labels=labels).item() == pytest.approx(expected.item(), abs=1e-6)


def test_finetune_qat_cli_trains_and_writes_a_finn_checkpoint(tmp_path, tiny_dataset):
    """vidconv-finetune --qat on CPU: the FINN student trains through its quantizers, reloads bit for bit,
    and its card has the bits, the loss history and the test accuracy of student and teacher."""
    teacher = tmp_path / "teacher.safetensors"
    save_checkpoint(float_model("vic-nano", num_classes=10), teacher)
    out = tmp_path / "student.safetensors"
    assert finetune_main(["--qat", "--bits", "w4a4", "--teacher", str(teacher), "--clips", str(tiny_dataset),
                          "--epochs", "2", "--batch", "4", "--lr", "1e-3", "--out", str(out)]) == 0
    card = yaml.safe_load(out.with_suffix(".yaml").read_text())
    assert card["bits"] == "w4a4" and card["name"] == "vic-nano-finn-w4a4" and len(card["training"]["history"]) == 2
    assert card["accuracy"]["test"]["student"]["videos"] == 6 and "top1_agreement_with_teacher" in card["accuracy"]["test"]
    student = load_finn_checkpoint(out)
    assert isinstance(student, FinnViC) and str(student.bits) == "w4a4"
    assert finn_teacher(out) == teacher  # vidconv-export --target finn-* scores it as the float reference
    untrained = from_float(load_model(teacher)[0].eval(), "w4a4")
    assert not torch.equal(untrained.stages[2][0].pwconv1.weight, student.stages[2][0].pwconv1.weight)


def test_shipped_finn_model_names_the_shipped_teacher():
    shipped = shipped_weights("vic-nano-finn-w4a4")
    assert shipped is not None and finn_teacher(shipped).resolve() == shipped_weights("vic-nano").resolve()
    assert finn_teacher(shipped_weights("vic-nano")) is None  # a float model's card names no teacher


def test_finetune_needs_a_student_or_qat(tmp_path, tiny_dataset, capsys):
    teacher = tmp_path / "teacher.safetensors"
    save_checkpoint(float_model("vic-nano", num_classes=10), teacher)
    assert finetune_main(["--teacher", str(teacher), "--clips", str(tiny_dataset), "--out", str(tmp_path / "s.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--qat for the FINN variant" in err[0]


def test_quantizer_sqnr_falls_with_the_bit_width():
    """Per-quantizer SQNR against the same model with quantizers off: every quantizer in stream order, both
    uses of a shared one counted, and far more error at 2 bits than at 8."""
    src = float_model()
    data = clips(1)
    rows = {bits: quantizer_sqnr(calibrate(from_float(src, bits), data), data) for bits in ("w8a8", "w2a2")}
    names = [row["quantizer"] for row in rows["w8a8"]]
    assert names[0] == "input_quant" and names[-1] == "out_quant" and names == [r["quantizer"] for r in rows["w2a2"]]
    first_block = {row["quantizer"]: row["elements"] for row in rows["w8a8"]}
    assert first_block["stages.0.0.quant_in"] == 2 * first_block["downs.1.quant"]  # same tensor shape, used twice
    mean = {bits: sum(r["sqnr_db"] for r in rs) / len(rs) for bits, rs in rows.items()}
    assert mean["w8a8"] > 25 and mean["w8a8"] > mean["w2a2"] + 15


def test_boards():
    kv260 = get_board("finn-kv260")
    assert kv260.part == "xck26-sfvc784-2LV-c" and kv260.budget["BRAM_18K"] == 2 * 144  # 144 BRAM36 tiles
    assert get_board("pynq-z2").budget["URAM"] == 0 and not get_board("vck190").zynq_shell
    assert set(finn_targets()) == {"finn-kv260", "finn-zcu104", "finn-pynq-z2", "finn-vck190"}
    with pytest.raises(UserError, match="did you mean kv260"):
        get_board("kv26")


def test_export_without_finn_plus_names_the_install_script(tmp_path, monkeypatch, capsys):
    from vidconv_deploy.cli.export import main as export_main
    from vidconv_deploy.finn import finn_env

    monkeypatch.setattr(finn_env, "finn_installed", lambda: False)
    assert export_main(["--target", "finn-kv260", "--out", str(tmp_path / "out")]) == 2
    assert "scripts/finn-install.sh" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
