"""The exact rewrite, each pass alone, the ONNX export, the streaming split and the bundle."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from vidconv_deploy import build_model, save_checkpoint
from vidconv_deploy.cli.export import main as export_main
from vidconv_deploy.export.deploy_model import ChannelScale, TileConcat, TileRepeat, to_deploy
from vidconv_deploy.export.onnx_export import MethodModule, export_graph, relative_error
from vidconv_deploy.onnx_session import run_onnx
from vidconv_deploy.export.passes import (
    STANDARD_PASSES, FoldLayerScale, FoldNeckBatchNorm, FoldTemporalScale, TileAsConcat, apply_passes,
)
from vidconv_deploy.export.onnx_export import DEPLOY_FORBIDDEN, STREAMING_FORBIDDEN

TOL = 1e-5
TINY = {"dims": (8, 16, 24, 32), "depths": (1, 1, 2, 1), "neck_dim": 40}


def randomise_scales(model):
    """Give gamma, alpha and the neck BatchNorm non-trivial values so folding them is really tested."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "gamma_tem")):
                p.copy_(torch.randn(p.shape, generator=gen))
        if model.neck is not None:
            bn = model.neck.bn
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen))
            bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            bn.weight.copy_(torch.randn(bn.num_features, generator=gen))
            bn.bias.copy_(torch.randn(bn.num_features, generator=gen))
    return model.eval()


def tiny(**kw):
    return randomise_scales(build_model("vic-t", **{"num_classes": 5, "image_size": 64, **TINY, **kw}))


def clip_for(model, seed=0):
    return torch.randn(1, model.cfg.frames, 3, *model.cfg.image_size, generator=torch.Generator().manual_seed(seed))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return relative_error(a.numpy(), b.numpy())


def test_to_deploy_is_exact_and_leaves_the_model_untouched():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clip = clip_for(model)
    with torch.no_grad():
        assert rel(to_deploy(model)(clip), model(clip)) <= TOL
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _no_channel_scale(m):
    return all(not isinstance(b.layer_scale, ChannelScale) for b in m.modules() if hasattr(b, "layer_scale"))


def _no_temporal_scale(m):
    return all(not isinstance(b.scale, ChannelScale) for b in m.modules() if hasattr(b, "tile"))


def _neck_without_bn(m):
    return len(m.neck) == 2 and m.neck[0].bias is not None


def _tiles_are_concat(m):
    tiles = [b.tile for b in m.modules() if hasattr(b, "tile")]
    return tiles and all(isinstance(t, TileConcat) for t in tiles)


@pytest.mark.parametrize("rewrite,done", [
    (FoldLayerScale(), _no_channel_scale),
    (FoldTemporalScale(), _no_temporal_scale),
    (FoldNeckBatchNorm(), _neck_without_bn),
    (TileAsConcat(), _tiles_are_concat),
], ids=lambda v: getattr(v, "name", ""))
def test_each_pass_alone_is_exact_and_does_its_one_thing(rewrite, done):
    model = tiny(frames=6, grid=(2, 3), image_size=(64, 96))
    deploy = to_deploy(model)
    clip = clip_for(model)
    assert not done(deploy)
    with torch.no_grad():
        before = deploy(clip)
        after = rewrite.apply(deploy)(clip)
    assert done(deploy)
    assert rel(after, before) <= TOL


def test_pass_on_model_without_neck_is_a_no_op():
    model = tiny(neck=False)
    deploy = to_deploy(model)
    assert FoldNeckBatchNorm().apply(deploy).neck.__class__ is nn.Identity


@pytest.mark.parametrize("arch", ["vic-t", "vic-s", "vic-b"])
@pytest.mark.parametrize("image_size", [32, 64])
@pytest.mark.parametrize("frames,grid", [(9, (3, 3)), (6, (2, 3))])
def test_full_architectures_rewrite_exactly_in_torch(arch, image_size, frames, grid):
    model = randomise_scales(build_model(arch, num_classes=10, frames=frames, grid=grid, image_size=image_size))
    clip = clip_for(model)
    with torch.no_grad():
        assert rel(apply_passes(to_deploy(model), STANDARD_PASSES)(clip), model(clip)) <= TOL


def op_types(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


@pytest.mark.parametrize("arch,depths", [("vic-t", None), ("vic-s", (1, 1, 2, 1)), ("vic-b", (1, 1, 2, 1))])
@pytest.mark.parametrize("image_size,frames,grid", [(32, 9, (3, 3)), (64, 6, (2, 3))])
def test_onnx_runtime_matches_pytorch(arch, depths, image_size, frames, grid):
    """ONNX Runtime on the deploy graph vs the PyTorch VidConv: ViC-T whole; S and B with real widths, 2 stage-3 blocks."""
    extra = {"depths": depths} if depths else {}
    model = randomise_scales(build_model(arch, num_classes=10, frames=frames, grid=grid, image_size=image_size, **extra))
    clip = clip_for(model)
    graph = export_graph(apply_passes(to_deploy(model), STANDARD_PASSES), clip, "clip", "logits", DEPLOY_FORBIDDEN)
    with torch.no_grad():
        expected = model(clip).numpy()
    assert relative_error(run_onnx(graph.model, {"clip": clip.numpy()})[0], expected) <= TOL
    ops = op_types(graph.model)
    assert not ops & DEPLOY_FORBIDDEN and "Tile" not in ops and "LayerNormalization" not in ops
    assert {"MatMul", "Gemm"} & ops == {"Gemm"}  # block MLPs became 1x1 Conv; only the head is a Gemm
    assert sum(n.op_type == "Transpose" for n in graph.model.graph.node) == 1  # the collage, once


def test_streaming_graphs_hold_no_rearrangement_and_compose_to_the_model():
    model = tiny()
    deploy = apply_passes(to_deploy(model), STANDARD_PASSES)
    early = export_graph(MethodModule(deploy, deploy.early), torch.randn(deploy.frame_shape()), "frame", "features",
                         STREAMING_FORBIDDEN)
    later = export_graph(MethodModule(deploy, deploy.later), torch.randn(deploy.collage_shape()), "collage", "logits",
                         STREAMING_FORBIDDEN)
    assert early.input_shape == (1, 3, 64, 64) and early.output_shape == (1, 24, 4, 4)
    assert later.input_shape == (1, 24, 12, 12)
    from vidconv_deploy.runners import OnnxRuntimeRunner, StreamingSplit

    clip = clip_for(model)
    with torch.no_grad():
        expected = model(clip).numpy()
    split = StreamingSplit((3, 3), OnnxRuntimeRunner(early.model), OnnxRuntimeRunner(later.model))
    assert relative_error(split.run_clip(clip.numpy()).logits, expected) <= TOL


def test_node_names_say_stage_block_and_role():
    model = tiny()
    graph = export_graph(apply_passes(to_deploy(model), STANDARD_PASSES), clip_for(model), "clip", "logits")
    convs = [n.name for n in graph.model.graph.node if n.op_type == "Conv"]
    assert "/stage3/stage3.1/temporal/conv/Conv" in convs
    assert "/stage1/stage1.0/pw1/Conv" in convs and "/neck/neck.0/Conv" in convs
    assert any(n.startswith("/stage3/stage3.0/temporal/tile/Concat") for n in (x.name for x in graph.model.graph.node))


def test_tile_repeat_exports_as_tile_which_the_deploy_graph_forbids():
    model = tiny()
    deploy = to_deploy(model)  # no TileAsConcat
    assert isinstance(deploy.stage3[0].temporal.tile, TileRepeat)
    with pytest.raises(RuntimeError, match="still contains"):
        export_graph(deploy, clip_for(model), "clip", "logits", frozenset({"Tile"}))


# ---- the CLI and the bundle -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    ckpt = tmp / "tiny.safetensors"
    save_checkpoint(tiny(frames=4, image_size=64), ckpt)
    assert export_main(["--checkpoint", str(ckpt), "--out", str(tmp / "out")]) == 0
    return tmp / "out" / "vic-t-onnx"


def test_bundle_manifest_names_every_artifact_with_its_hash(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["artifacts"]) == {"float_onnx", "deploy_onnx", "early_onnx", "later_onnx", "compliance_json"}
    for role, art in manifest["artifacts"].items():
        data = (bundle / art["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == art["sha256"] and len(data) == art["bytes"], role
    assert manifest["io"]["early_onnx"]["inputs"] == [{"name": "frame", "shape": [1, 3, 64, 64], "dtype": "float32"}]
    assert manifest["io"]["deploy_onnx"]["inputs"][0]["shape"] == [1, 4, 3, 64, 64]
    assert manifest["io"]["later_onnx"]["outputs"][0] == {"name": "logits", "shape": [1, 5], "dtype": "float32"}
    assert {s["name"] for s in manifest["steps"]} >= {"export float graph", "rewrite", "export deploy graph",
                                                      "export streaming split", "check operators"}
    assert all(s["seconds"] >= 0 for s in manifest["steps"])
    assert manifest["tools"]["torch"].startswith("2.13.0") and "onnxruntime" in manifest["tools"]
    assert manifest["model"]["weights"]["layout"] == "vidconv"
    assert all(manifest["verification"][k] <= TOL for k in ("deploy_vs_torch", "streaming_vs_torch", "float_vs_torch"))
    assert not list(bundle.glob(".*tmp"))  # no temporary files left


def test_bundle_graphs_are_static_and_checked(bundle):
    for name in ("deploy.onnx", "early.onnx", "later.onnx"):
        model = onnx.load(bundle / name)
        onnx.checker.check_model(model, full_check=True)
        for value in [*model.graph.input, *model.graph.output]:
            assert all(d.HasField("dim_value") for d in value.type.tensor_type.shape.dim), name
    assert not op_types(onnx.load(bundle / "deploy.onnx")) & DEPLOY_FORBIDDEN
    compliance = json.loads((bundle / "compliance.json").read_text())
    assert compliance["target"] == "onnx" and compliance["compliant"] is True


def test_failed_export_leaves_no_manifest(tmp_path, monkeypatch, capsys):
    """A tool error mid-export is one line and exit 2; the bundle an earlier run finished stays byte for byte,
    and neither a new manifest nor the staging folder is left (issue 12: built beside, swapped in when complete)."""
    out = tmp_path / "out"
    (out / "vic-t-onnx").mkdir(parents=True)
    (out / "vic-t-onnx" / "manifest.json").write_text("{}")  # from an earlier run
    ckpt = tmp_path / "t.safetensors"
    save_checkpoint(tiny(frames=4), ckpt)

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash")

    monkeypatch.setattr("vidconv_deploy.targets.onnx_steps.check_model", broken)
    assert export_main(["--checkpoint", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert errors == [err.splitlines()[-1]] and "RuntimeError: simulated crash" in errors[0] and "Traceback" not in err
    names = sorted(p.name for p in (out / "vic-t-onnx").iterdir())
    assert names == ["manifest.json"] and (out / "vic-t-onnx" / "manifest.json").read_text() == "{}"
    assert sorted(p.name for p in out.iterdir()) == ["vic-t-onnx"]


@pytest.mark.parametrize("argv,message", [
    (["--target", "onnxx"], "unknown target 'onnxx': did you mean onnx?"),
    (["--target", "dpu-kv260", "--arch", "vic-z-dpu"], "unknown architecture 'vic-z-dpu'"),
    (["--arch", "vic-z"], "unknown architecture 'vic-z'"),
    (["--checkpoint", "/nonexistent.pth"], "checkpoint /nonexistent.pth does not exist"),
])
def test_export_bad_input_is_one_line(tmp_path, argv, message):
    script = Path(sys.executable).parent / "vidconv-export"
    proc = subprocess.run([str(script), *argv, "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("vidconv-export: error: ")
    assert message in proc.stderr and proc.stderr.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_numpy_relative_error_definition():
    assert relative_error(np.array([1.0, 2.0]), np.array([1.0, 4.0])) == pytest.approx(0.5)
