"""Clip sampling against hand-computed indices: Kinetics and SSv2, train and test, short and too-short videos."""

from __future__ import annotations

import numpy as np
import pytest

from vidconv_deploy.data.sampling import (
    KINETICS,
    SSV2,
    Protocol,
    TooShortError,
    clip_span,
    eval_indices,
    fit_stride,
    get_protocol,
    train_indices,
)
from vidconv_deploy.errors import UserError


def clip(start: int, stride: int, frames: int = 9) -> list[int]:
    return [start + stride * k for k in range(frames)]


def test_paper_protocols_as_data() -> None:
    assert (KINETICS.frames, KINETICS.train_strides, KINETICS.eval_stride, KINETICS.eval_clips) == (9, (8, 12), 12, 4)
    assert (SSV2.frames, SSV2.train_strides, SSV2.eval_stride, SSV2.eval_clips, SSV2.short_stride_cap) == (9, (5, 7), 6, 2, 5)
    assert get_protocol("ssv2", frames=4) == SSV2.with_frames(4)
    assert clip_span(9, 6) == 49


@pytest.mark.parametrize(
    ("num_frames", "stride", "expected"),
    [
        (100, 7, 7),  # fits: 57 <= 100
        (57, 7, 7),  # exactly fits
        (56, 7, 5),  # (56-1)//8 = 6, capped at 5 by the paper's min(5, .)
        (45, 6, 5),  # (45-1)//8 = 5
        (40, 6, 4),  # (40-1)//8 = 4: floor of the paper's (N-1)/8 = 4.875
        (30, 5, 3),
        (9, 5, 1),  # the shortest video: stride 1
    ],
)
def test_ssv2_short_video_stride(num_frames: int, stride: int, expected: int) -> None:
    assert fit_stride(SSV2, num_frames, stride) == expected


def test_too_short_video() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(TooShortError, match="8 frames, a clip needs at least 9"):
        fit_stride(SSV2, 8, 5)
    with pytest.raises(TooShortError):
        train_indices(SSV2, 8, rng)
    with pytest.raises(TooShortError):
        eval_indices(KINETICS, 0)


@pytest.mark.parametrize(
    ("protocol", "num_frames", "expected"),
    [
        # SSv2, stride 6 fits (span 49): starts 0 and the last valid start 60-49 = 11.
        (SSV2, 60, [clip(0, 6), clip(11, 6)]),
        # SSv2, 40 frames: stride 6 needs 49, so min(5, 39//8) = 4, span 33, starts 0 and 7.
        (SSV2, 40, [clip(0, 4), clip(7, 4)]),
        # Kinetics, 250 frames (10 s at 25 fps): stride 12, span 97, max start 153 -> 0, 51, 102, 153.
        (KINETICS, 250, [clip(0, 12), clip(51, 12), clip(102, 12), clip(153, 12)]),
        # Kinetics, 100 frames: max start 3 -> 0, 1, 2, 3.
        (KINETICS, 100, [clip(s, 12) for s in (0, 1, 2, 3)]),
        # Kinetics, 50 frames: stride min(8, 49//8) = 6, span 49, max start 1 -> round(0, 1/3, 2/3, 1).
        (KINETICS, 50, [clip(s, 6) for s in (0, 0, 1, 1)]),
        # Exactly one clip's worth of frames at stride 1.
        (SSV2, 9, [clip(0, 1), clip(0, 1)]),
    ],
)
def test_eval_indices(protocol: Protocol, num_frames: int, expected: list[list[int]]) -> None:
    indices = eval_indices(protocol, num_frames)
    assert indices.dtype == np.int64
    assert indices.tolist() == expected


def test_eval_indices_other_clip_lengths() -> None:
    four = SSV2.with_frames(4)  # a 2x2 grid
    assert eval_indices(four, 20).tolist() == [[0, 6, 12, 18], [1, 7, 13, 19]]
    # stride 6 needs 19 frames; min(5, 11//3) = 3, span 10, starts 0 and 2
    assert eval_indices(four, 12).tolist() == [[0, 3, 6, 9], [2, 5, 8, 11]]
    one_clip = Protocol("one", frames=9, train_strides=(1, 1), eval_stride=2, eval_clips=1, short_stride_cap=2)
    assert eval_indices(one_clip, 30).tolist() == [clip(6, 2)]  # max start 13 -> 13 // 2


def test_train_indices_follow_the_generator() -> None:
    """Stride drawn first, then the start, both from the caller's generator."""
    for seed in range(20):
        twin = np.random.default_rng(seed)
        stride = int(twin.integers(5, 8))
        start = int(twin.integers(0, 100 - clip_span(9, stride) + 1))
        assert train_indices(SSV2, 100, np.random.default_rng(seed)).tolist() == clip(start, stride)


def test_train_indices_cover_strides_and_starts() -> None:
    strides, starts = set(), set()
    for seed in range(300):
        idx = train_indices(KINETICS, 120, np.random.default_rng(seed))
        stride = int(idx[1] - idx[0])
        assert idx.tolist() == clip(int(idx[0]), stride)
        assert idx[-1] < 120
        strides.add(stride)
        starts.add(int(idx[0]))
    assert strides == {8, 9, 10, 11, 12}
    assert min(starts) == 0 and max(starts) == 120 - clip_span(9, 8)


def test_train_indices_short_video() -> None:
    """45 frames: stride 5 fits (span 41); 6 and 7 fall back to min(5, 44//8) = 5; starts 0..4."""
    got = {tuple(train_indices(SSV2, 45, np.random.default_rng(seed)).tolist()) for seed in range(200)}
    assert got == {tuple(clip(start, 5)) for start in range(5)}
    assert train_indices(SSV2, 9, np.random.default_rng(3)).tolist() == list(range(9))


def test_invalid_protocol() -> None:
    with pytest.raises(UserError, match="invalid sampling protocol"):
        Protocol("bad", frames=9, train_strides=(7, 5), eval_stride=6, eval_clips=2, short_stride_cap=5)
    with pytest.raises(UserError, match="unknown sampling protocol 'ucf': use one of kinetics, ssv2"):
        get_protocol("ucf")
