"""Decoding, video sources and the datasets' handling of bad videos, on small videos written here with PyAV."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vidconv_deploy.data.dataset import EvalClips, TrainClips
from vidconv_deploy.data.sampling import SSV2
from vidconv_deploy.data.sources import NO_LABEL, VideoItem, open_split, read_annotations, scan_folder
from vidconv_deploy.data.video import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BadVideo,
    _resized_size,
    default_short_side,
    load_clips,
    probe,
    read_frames,
    to_tensor,
)
from vidconv_deploy.errors import UserError

#: Distinct mid-range colours (saturated ones clip in limited-range YUV) for solid-colour frames.
COLOURS = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60], [60, 200, 200], [128, 128, 128],
                    [40, 40, 40], [220, 220, 220], [200, 60, 200], [100, 150, 50], [150, 50, 100], [90, 90, 160]])


def write_video(path: Path, frames: np.ndarray, fmt: str = "mp4", options: dict[str, str] | None = None) -> Path:
    """Encode uint8 RGB frames with libx264 at near-lossless quality."""
    with av.open(str(path), "w", format=fmt, options=options or {}) as container:
        stream = container.add_stream("libx264", rate=12)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def solid_frames(count: int, height: int = 48, width: int = 64) -> np.ndarray:
    return np.broadcast_to(COLOURS[:count, None, None, :], (count, height, width, 3)).astype(np.uint8)


def test_decoded_frames_have_the_expected_colours(tmp_path: Path) -> None:
    path = write_video(tmp_path / "solid.mp4", solid_frames(12))
    info = probe(path)
    assert (info.num_frames, info.width, info.height, info.counted_by) == (12, 64, 48, "container")
    indices = [3, 0, 11, 3]  # any order, repeats allowed
    frames = read_frames(path, indices, (32, 32))
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    means = frames.reshape(4, -1, 3).mean(axis=1)
    np.testing.assert_allclose(means, COLOURS[indices], atol=4)  # lossy YUV 4:2:0 round trip
    np.testing.assert_array_equal(frames[0], frames[3])


def test_frame_count_by_decoding_when_the_container_has_none(tmp_path: Path) -> None:
    path = write_video(tmp_path / "solid.mkv", solid_frames(10), fmt="matroska")  # Matroska stores no frame count
    info = probe(path)
    assert (info.num_frames, info.counted_by) == (10, "decoding")


def test_resize_shorter_side_then_crop() -> None:
    assert default_short_side((224, 224)) == 256
    assert default_short_side((64, 64)) == 73
    assert _resized_size(64, 48, 37, (32, 32)) == (49, 37)  # shorter side (height) to 37
    assert _resized_size(48, 64, 37, (32, 32)) == (37, 49)
    assert _resized_size(40, 200, 37, (64, 64)) == (64, 320)  # never narrower than the crop


def test_center_crop_keeps_the_middle(tmp_path: Path) -> None:
    frames = np.zeros((9, 48, 96, 3), dtype=np.uint8)
    frames[:, :, 32:64] = 255  # white middle third on black
    path = write_video(tmp_path / "bars.mp4", frames)
    # shorter side 48 -> 32 (scale 2/3): 64 wide, the white bar spans columns 21-43; the 32 crop keeps 16-48.
    out = read_frames(path, [0], (32, 32), short_side=32)[0].astype(int)
    assert out[:, 7:25].min() > 200  # crop columns 7-25 = resized 23-41: inside the bar
    assert out[:, :3].max() < 50 and out[:, -3:].max() < 50  # edges: black


def test_to_tensor_normalises_exactly() -> None:
    frames = np.array([[[[0, 128, 255]]]], dtype=np.uint8)  # (1, 1, 1, 3)
    tensor = to_tensor(frames)
    assert tensor.shape == (1, 3, 1, 1) and tensor.dtype == torch.float32
    expected = (np.array([0, 128, 255], dtype=np.float32) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_array_equal(tensor[0, :, 0, 0].numpy(), expected)


def test_load_clips_shape(tmp_path: Path) -> None:
    path = write_video(tmp_path / "solid.mp4", solid_frames(12))
    indices = np.array([[0, 2, 4, 6], [5, 7, 9, 11]])
    clips = load_clips(path, indices, (32, 32))
    assert clips.shape == (2, 4, 3, 32, 32)
    red = (200 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert abs(clips[0, 0, 0].mean().item() - red) < 0.1  # frame 0 is [200, 60, 60]


# --- bad videos -------------------------------------------------------------------------------


def write_audio_only(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(5):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def make_bad_videos(folder: Path) -> dict[str, Path]:
    """One file of every kind a dataset must skip, keyed by the reason it must report."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    whole = write_video(folder / "whole.mp4", solid_frames(12)).read_bytes()
    # With the index (moov) at the front the header survives truncation: only decoding finds out.
    front = write_video(folder / "front.mp4", solid_frames(12), options={"movflags": "+faststart"}).read_bytes()
    (folder / "whole.mp4").unlink()
    (folder / "front.mp4").unlink()
    bad = {
        "unreadable": folder / "random.mp4",
        "unreadable-truncated": folder / "truncated.mp4",
        "truncated": folder / "truncated_front.mp4",
        "empty": folder / "empty.mp4",
        "no-video-stream": folder / "audio.mp4",
        "too-short": folder / "short.mp4",
        "missing": folder / "missing.mp4",
    }
    bad["unreadable"].write_bytes(rng.bytes(4096))
    bad["unreadable-truncated"].write_bytes(whole[: len(whole) // 2])  # index at the end: cut off
    bad["truncated"].write_bytes(front[: len(front) * 2 // 3])
    bad["empty"].write_bytes(b"")
    write_audio_only(bad["no-video-stream"])
    write_video(bad["too-short"], solid_frames(6))
    return bad


def test_read_frames_reports_why_a_video_is_bad(tmp_path: Path) -> None:
    bad = make_bad_videos(tmp_path)
    for key, path in bad.items():
        if key == "too-short":  # a valid video: too short only for a protocol
            assert probe(path).num_frames == 6
            with pytest.raises(BadVideo, match="truncated: the video ended after 6 frames, frame 8 was needed"):
                read_frames(path, range(9), (32, 32))
            continue
        with pytest.raises(BadVideo) as err:
            read_frames(path, range(9), (32, 32))
        assert err.value.reason == key.removesuffix("-truncated")


@pytest.mark.parametrize("dataset", [TrainClips, EvalClips])
def test_datasets_skip_and_count_bad_videos(tmp_path: Path, caplog: pytest.LogCaptureFixture, dataset: type) -> None:
    bad = make_bad_videos(tmp_path / "bad")
    good = [write_video(tmp_path / f"good{i}.mp4", solid_frames(12)) for i in range(2)]
    items = [VideoItem(p, i) for i, p in enumerate(good)] + [VideoItem(p, 5) for p in bad.values()]
    with caplog.at_level(logging.WARNING, logger="vidconv_deploy.data"):
        clips = dataset(items, SSV2, (32, 32), progress=False)
        assert len(clips) == 3  # the good two and the truncated one, whose header looks fine
        first = list(clips)
        second = list(clips)
    assert sorted(label for _, label in first) == [0, 1] and len(second) == 2
    shape = (9, 3, 32, 32) if dataset is TrainClips else (2, 9, 3, 32, 32)
    assert all(tuple(x.shape) == shape and torch.isfinite(x).all() for x, _ in first)
    assert clips.skips.counts() == {"empty": 1, "missing": 1, "no-video-stream": 1, "too-short": 1,
                                    "truncated": 1, "unreadable": 2}
    assert sorted(clips.skips.files["unreadable"]) == sorted([str(bad["unreadable"]), str(bad["unreadable-truncated"])])
    # one warning line per bad file, naming it and the reason, and none again in the second pass
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == len(bad) and all("\n" not in line for line in lines)
    assert any(line.startswith(f"skipped video {bad['no-video-stream']}: no-video-stream") for line in lines)
    assert clips.skips.to_dict()["skipped"] == len(bad)


def test_train_clips_work_with_a_data_loader(tmp_path: Path) -> None:
    paths = [write_video(tmp_path / f"v{i}.mp4", solid_frames(12)) for i in range(3)]
    clips = TrainClips([VideoItem(p, i) for i, p in enumerate(paths)], SSV2, 32, seed=1, progress=False)
    loader = torch.utils.data.DataLoader(clips, batch_size=2)
    batches = list(loader)
    assert [tuple(b[0].shape) for b in batches] == [(2, 9, 3, 32, 32), (1, 9, 3, 32, 32)]
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == [0, 1, 2]
    again = list(loader)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))


# --- sources ----------------------------------------------------------------------------------


def test_scan_folder_with_and_without_classes(tmp_path: Path) -> None:
    for name in ("walk/a.mp4", "walk/b.MP4", "run/c.avi", "run/notes.txt"):
        (tmp_path / "classes" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "classes" / name).write_bytes(b"x")
    source = scan_folder(tmp_path / "classes")
    assert source.classes == ("run", "walk")
    assert [(p.path.name, p.label) for p in source.items] == [("c.avi", 0), ("a.mp4", 1), ("b.MP4", 1)]
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.mp4").write_bytes(b"x")
    flat = scan_folder(tmp_path / "flat")
    assert flat.classes == () and [(p.path.name, p.label) for p in flat.items] == [("x.mp4", NO_LABEL)]
    (tmp_path / "classes" / "stray.mp4").write_bytes(b"x")
    with pytest.raises(UserError, match="videos both at the top and in sub-folders"):
        scan_folder(tmp_path / "classes")
    (tmp_path / "none").mkdir()
    with pytest.raises(UserError, match="no videos"):
        scan_folder(tmp_path / "none")


def test_annotation_list(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("a/one.mp4 0\n\nb/two words.mp4 2\n", encoding="utf-8")
    source = read_annotations(tmp_path / "list.txt", root=tmp_path / "videos")
    assert [(p.path, p.label) for p in source.items] == [(tmp_path / "videos/a/one.mp4", 0),
                                                        (tmp_path / "videos/b/two words.mp4", 2)]
    assert source.classes == ("class_0", "class_1", "class_2")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a.mp4", "list.txt:2: expected 'relative/path.mp4 LABEL' with a non-negative integer label, got 'a.mp4': fix or delete the line"),
        ("a.mp4 walk", "list.txt:2: expected 'relative/path.mp4 LABEL'"),
        ("a.mp4 -1", "list.txt:2: expected 'relative/path.mp4 LABEL'"),
        ("/abs/a.mp4 1", "list.txt:2: path '/abs/a.mp4' is absolute: write it relative to the root folder"),
        ("a.mp4 3", "list.txt:2: label 3 but there are only 3 classes: fix the label or add the class"),
    ],
)
def test_annotation_list_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    (tmp_path / "list.txt").write_text(f"ok.mp4 0\n{line}\n", encoding="utf-8")
    with pytest.raises(UserError, match=message.replace(".", r"\.").replace("(", r"\(")):
        read_annotations(tmp_path / "list.txt", classes=("a", "b", "c"))


def test_open_split_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no annotation list .*train.txt: make one with vidconv-make-data --out DIR"):
        open_split(tmp_path, "train")
    (tmp_path / "val.txt").write_text("", encoding="utf-8")
    with pytest.raises(UserError, match="train.txt: splits here: val"):
        open_split(tmp_path, "train")
    with pytest.raises(UserError, match="val.txt has no entries"):
        open_split(tmp_path, "val")
