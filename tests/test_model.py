"""Model zoo: shapes, derived dilations and the collage over grids, sizes and frame counts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vidconv_deploy import UserError, build_model
from vidconv_deploy.models.collage import collage_to_frames, frames_to_collage, tile_to_collage
from vidconv_deploy.models.config import grid_for_frames, make_config

TINY = {"dims": (4, 8, 8, 16), "depths": (1, 1, 1, 1), "neck_dim": 12}
grids = st.tuples(st.integers(1, 3), st.integers(1, 3))
sizes = st.tuples(st.integers(1, 4), st.integers(1, 4)).map(lambda s: (32 * s[0], 32 * s[1]))


@settings(max_examples=25, deadline=None)
@given(grid=grids, size=sizes, neck=st.booleans(), segs=st.integers(1, 2), classes=st.integers(1, 7))
def test_output_shape_and_derived_dilations(grid, size, neck, segs, classes):
    model = build_model("vic-t", num_classes=classes, frames=grid[0] * grid[1], grid=grid,
                        image_size=size, neck=neck, **TINY).eval()
    h4, w4 = size[0] // 32, size[1] // 32
    stage3 = model.backbone.stages[2][0].dwconv_tem
    stage4 = model.backbone.stages[3][0].dwconv_tem
    assert stage3.dilation == (size[0] // 16, size[1] // 16) and stage3.kernel_size == grid
    assert stage4.dilation == (h4, w4) and stage4.kernel_size == grid and stage3.padding == (0, 0)
    if neck:
        assert model.neck.conv.dilation == (h4, w4) and model.neck.conv.kernel_size == grid
        assert model.neck.conv.bias is None
    with torch.no_grad():
        out = model(torch.randn(2, segs * grid[0] * grid[1], 3, *size))
    assert out.shape == (2, classes)


@settings(max_examples=30, deadline=None)
@given(grid=grids, batch=st.integers(1, 2), h=st.integers(1, 3), w=st.integers(1, 3))
def test_collage_puts_frame_t_at_row_t_div_w_column_t_mod_w(grid, batch, h, w):
    rows, cols = grid
    frames = torch.arange(batch * rows * cols, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 2, h, w)
    collage = frames_to_collage(frames.contiguous(), grid)
    assert collage.shape == (batch, 2, rows * h, cols * w)
    for b in range(batch):
        for t in range(rows * cols):
            cell = collage[b, :, (t // cols) * h:(t // cols + 1) * h, (t % cols) * w:(t % cols + 1) * w]
            assert torch.all(cell == b * rows * cols + t)
    torch.testing.assert_close(collage_to_frames(collage, grid), frames, rtol=0, atol=0)


def test_tile_repeats_the_temporal_map_in_every_cell():
    frame = torch.randn(1, 3, 2, 5)
    tiled = tile_to_collage(frame, (2, 3))
    for r in range(2):
        for c in range(3):
            torch.testing.assert_close(tiled[..., r * 2:(r + 1) * 2, c * 5:(c + 1) * 5], frame, rtol=0, atol=0)


def test_segments_average_like_the_recognizer():
    model = build_model("vic-t", num_classes=3, frames=4, image_size=64, **TINY).eval()
    clips = torch.randn(1, 12, 3, 64, 64)
    with torch.no_grad():
        whole = model(clips)
        each = [model(clips[:, 4 * s:4 * s + 4]) for s in range(3)]
    torch.testing.assert_close(whole, sum(each) / 3, rtol=1e-5, atol=1e-6)


def test_temporal_branch_mixes_frames_and_early_net_does_not():
    """Changing one frame changes the early features of that frame only; the later net sees all."""
    model = build_model("vic-t", num_classes=3, frames=4, image_size=64, **TINY).eval()
    clips = torch.randn(1, 4, 3, 64, 64)
    changed = clips.clone()
    changed[0, 3] += 1.0
    with torch.no_grad():
        a = model.backbone.forward_early(clips[0])
        b = model.backbone.forward_early(changed[0])
    torch.testing.assert_close(a[:3], b[:3], rtol=0, atol=0)
    assert not torch.allclose(a[3], b[3])


@pytest.mark.parametrize("frames,grid", [(4, (2, 2)), (9, (3, 3)), (16, (4, 4)), (1, (1, 1))])
def test_grid_from_frames(frames, grid):
    assert grid_for_frames(frames) == grid


@pytest.mark.parametrize("kwargs,message", [
    ({"frames": 6}, "6 frames do not form a square collage"),
    ({"frames": 6, "grid": (2, 2)}, "grid 2x2 holds 4 frames, not 6"),
    ({"image_size": 100}, "image size 100x100 is not a multiple of 32"),
    ({"image_size": (64, 48)}, "image size 64x48 is not a multiple of 32"),
    ({"num_classes": 0}, "0 classes: give a positive number"),
])
def test_bad_configs(kwargs, message):
    with pytest.raises(UserError, match=message):
        make_config("vic-t", **kwargs)


def test_unknown_arch_suggests_close_names():
    with pytest.raises(UserError, match=r"unknown architecture 'vic-tt': did you mean vic-t"):
        make_config("vic-tt")


@pytest.mark.parametrize("shape,message", [
    ((1, 5, 3, 64, 64), "5 frames is not a multiple of the clip length 4"),
    ((1, 4, 3, 32, 64), r"does not fit this model: expected \(batch, 4\*segments, 3, 64, 64\)"),
    ((4, 3, 64, 64), "does not fit this model"),
])
def test_bad_input_shapes(shape, message):
    model = build_model("vic-t", num_classes=3, frames=4, image_size=64, **TINY)
    with pytest.raises(UserError, match=message):
        model(torch.zeros(shape))


def test_drop_path_is_active_only_in_training():
    model = build_model("vic-t", num_classes=3, frames=4, image_size=64, drop_path_rate=0.5, **TINY)
    rates = [block.drop_path.p for stage in model.backbone.stages for block in stage]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.5) and rates == sorted(rates)
    clips = torch.randn(1, 4, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(clips), model(clips), rtol=0, atol=0)
