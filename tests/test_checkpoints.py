"""Checkpoint import: every layout loads strictly and round-trips; bad files get one-line errors."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from authors_forward import authors_forward
from foreign_checkpoints import authors_keys, facebook_keys, random_state, timm_keys, torchvision_keys
from vidconv_deploy import CheckpointError, build_model, load_checkpoint, load_model, save_checkpoint

TINY = {"dims": (8, 16, 24, 32), "depths": (2, 1, 2, 1), "neck_dim": 40}
VIDEO_ONLY_KEYS = (2 + 1) * 3 + 1 + 5 + 2  # temporal conv weight+bias+gamma_tem in 3 blocks; neck conv + 5 BN entries; head


def tiny(**kw):
    kw = {"num_classes": 5, "image_size": 64, **TINY, **kw}
    return build_model("vic-t", **kw).eval()


def save_pth(tmp_path: Path, obj, name: str = "ckpt.pth") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_torchvision_key_list_matches_convnext_tiny_parameter_count():
    # torchvision's convnext_tiny has 28,589,128 parameters: our independent key list must agree.
    shapes = torchvision_keys((96, 192, 384, 768), (3, 3, 9, 3))
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 28_589_128


@pytest.mark.parametrize("grid,image_size,segs", [((3, 3), 224, 1), ((2, 3), (64, 96), 2), ((1, 1), 32, 1)])
def test_authors_checkpoint_matches_independent_forward(tmp_path, grid, image_size, segs):
    sd = random_state(authors_keys(TINY["dims"], TINY["depths"], grid, TINY["neck_dim"], 5), seed=1)
    path = save_pth(tmp_path, {"meta": {"epoch": 30}, "state_dict": sd})
    frames = grid[0] * grid[1]
    model = tiny(frames=frames, grid=grid, image_size=image_size)
    report = load_checkpoint(model, path)
    assert report.layout == "authors-mmaction2"
    assert report.loaded == len(sd) and report.initialised == () and report.dropped == ()
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    clips = torch.randn(2, segs * frames, 3, h, w, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(clips)
        theirs = authors_forward(sd, clips, grid)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_authors_checkpoint_without_neck(tmp_path):
    sd = random_state(authors_keys(TINY["dims"], TINY["depths"], (3, 3), TINY["neck_dim"], 5, neck=False))
    model = tiny(frames=9, neck=False)
    load_checkpoint(model, save_pth(tmp_path, {"meta": {}, "state_dict": sd}))
    clips = torch.randn(1, 9, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(clips), authors_forward(sd, clips, (3, 3)), rtol=1e-5, atol=1e-6)


IMAGENET = [
    ("facebook-convnext", facebook_keys, lambda sd: {"model": sd},
     {"backbone.stages.1.0.pwconv1.weight": "stages.1.0.pwconv1.weight",
      "backbone.downsample_layers.3.1.weight": "downsample_layers.3.1.weight"},
     ("head.bias", "head.weight", "norm.bias", "norm.weight")),
    ("timm-convnext", timm_keys, lambda sd: sd,
     {"backbone.stages.1.0.pwconv1.weight": "stages.1.blocks.0.mlp.fc1.weight",
      "backbone.stages.2.1.dwconv.bias": "stages.2.blocks.1.conv_dw.bias",
      "backbone.downsample_layers.0.1.weight": "stem.1.weight",
      "backbone.downsample_layers.2.0.bias": "stages.2.downsample.0.bias"},
     ("head.fc.bias", "head.fc.weight", "head.norm.bias", "head.norm.weight")),
    ("torchvision-convnext", torchvision_keys, lambda sd: sd,
     {"backbone.stages.3.0.pwconv2.weight": "features.7.0.block.5.weight",
      "backbone.stages.0.1.norm.weight": "features.1.1.block.2.weight",
      "backbone.downsample_layers.2.1.weight": "features.4.1.weight"},
     ("classifier.0.bias", "classifier.0.weight", "classifier.2.bias", "classifier.2.weight")),
]


@pytest.mark.parametrize("layout,keys,wrap,pairs,dropped", IMAGENET, ids=[c[0] for c in IMAGENET])
def test_imagenet_layout_loads_backbone_and_leaves_video_parts_initialised(tmp_path, layout, keys, wrap, pairs, dropped):
    sd = random_state(keys(TINY["dims"], TINY["depths"]), seed=3)
    model = tiny()
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_checkpoint(model, save_pth(tmp_path, wrap(sd)))
    assert report.layout == layout
    assert report.loaded == len(sd) - len(dropped)
    assert sorted(report.dropped) == sorted(dropped)
    assert len(report.initialised) == VIDEO_ONLY_KEYS
    assert all(("dwconv_tem" in k or "gamma_tem" in k or k.startswith(("neck.", "head."))) for k in report.initialised)
    state = model.state_dict()
    for ours, theirs in pairs.items():
        torch.testing.assert_close(state[ours], sd[theirs], rtol=0, atol=0)
    for key in report.initialised:  # untouched by the load
        torch.testing.assert_close(state[key], fresh[key], rtol=0, atol=0)
    assert "left initialised" in report.summary()


def test_torchvision_layer_scale_is_reshaped(tmp_path):
    sd = random_state(torchvision_keys(TINY["dims"], TINY["depths"]))
    model = tiny()
    load_checkpoint(model, save_pth(tmp_path, sd))
    torch.testing.assert_close(model.backbone.stages[2][1].gamma.data, sd["features.5.1.layer_scale"].flatten(), rtol=0, atol=0)


def test_own_format_round_trip_builds_the_same_model(tmp_path):
    model = tiny(frames=6, grid=(2, 3), image_size=(64, 96))
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path)
    rebuilt, report = load_model(path)
    assert rebuilt.cfg == model.cfg and report.layout == "vidconv"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(rebuilt.state_dict()[key], value, rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind


def test_plain_state_dict_of_our_model_loads(tmp_path):
    model = tiny()
    other = tiny()
    report = load_checkpoint(other, save_pth(tmp_path, {"module." + k: v for k, v in model.state_dict().items()}))
    assert report.layout == "vidconv"
    torch.testing.assert_close(other.head.weight, model.head.weight, rtol=0, atol=0)


# ---- bad checkpoints: one line each, naming the problem -------------------------------------------------

def authors_file(tmp_path, mutate=None, **cfg):
    dims, depths = cfg.get("dims", TINY["dims"]), cfg.get("depths", TINY["depths"])
    sd = random_state(authors_keys(dims, depths, cfg.get("grid", (3, 3)), TINY["neck_dim"], cfg.get("classes", 5)))
    if mutate:
        mutate(sd)
    return save_pth(tmp_path, {"meta": {}, "state_dict": sd})


def error_of(model, path) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_keys_are_named(tmp_path):
    path = authors_file(tmp_path, lambda sd: sd.pop("backbone.stages.0.1.norm.bias"))
    assert "1 missing keys (backbone.stages.0.1.norm.bias)" in error_of(tiny(), path)


def test_unexpected_keys_are_named(tmp_path):
    def extra(sd):
        sd["cls_head.extra.weight"] = torch.zeros(3)
        sd["backbone.stages.0.0.bogus"] = torch.zeros(3)
    message = error_of(tiny(), authors_file(tmp_path, extra))
    assert "2 unexpected keys (cls_head.extra.weight, backbone.stages.0.0.bogus)" in message


def test_shape_mismatch_names_key_expected_and_found(tmp_path):
    path = authors_file(tmp_path, lambda sd: sd.__setitem__("backbone.stages.1.0.norm.weight", torch.zeros(17)))
    assert "1 shape mismatches (backbone.stages.1.0.norm.weight expected [16] found [17])" in error_of(tiny(), path)


def test_wrong_arch_names_both_architectures(tmp_path):
    sd = random_state(facebook_keys((96, 192, 384, 768), (3, 3, 27, 3)))
    message = error_of(build_model("vic-t"), save_pth(tmp_path, {"model": sd}))
    assert "holds vic-s weights but the model is vic-t" in message and "arch='vic-s'" in message


def test_wrong_grid_and_wrong_classes(tmp_path):
    assert "trained on a 4x4 collage (16 frames)" in error_of(tiny(), authors_file(tmp_path, grid=(4, 4)))
    assert "has 174 classes but the model has 5: build the model with num_classes=174" in error_of(
        tiny(), authors_file(tmp_path, classes=174))


@pytest.mark.parametrize("content,needle", [
    (b"", "is not a checkpoint"),
    (b"\x00\x01garbage" * 10, "is not a checkpoint"),
    (b'{"json": true}', "is not a checkpoint"),
])
def test_not_a_checkpoint(tmp_path, content, needle):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    assert needle in error_of(tiny(), path)


def test_non_tensor_content_is_not_a_checkpoint(tmp_path):
    assert "holds list, not a state dict" in error_of(tiny(), save_pth(tmp_path, [1, 2, 3]))
    assert "is not a VidConv or ConvNeXt checkpoint" in error_of(tiny(), save_pth(tmp_path, {"w": torch.zeros(2)}))


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(_Exploit.target),))


def test_pickled_code_is_never_run(tmp_path):
    _Exploit.target = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Exploit()}, f)
    message = error_of(tiny(), path)
    assert "not a checkpoint" in message
    assert not (tmp_path / "pwned").exists()


def test_missing_file(tmp_path):
    assert error_of(tiny(), tmp_path / "nope.pth") == f"checkpoint {tmp_path / 'nope.pth'} does not exist: check the path"


def test_load_model_needs_a_self_describing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not say which model it builds"):
        load_model(authors_file(tmp_path))


def test_error_reaches_the_user_as_one_line_without_traceback(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"junk")
    code = f"from vidconv_deploy.cli.common import run_main\nfrom vidconv_deploy import build_model, load_checkpoint\n" \
           f"raise SystemExit(run_main('t', lambda a: load_checkpoint(build_model('vic-t'), {str(path)!r}), None))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("t: error: ") and "Traceback" not in proc.stderr
