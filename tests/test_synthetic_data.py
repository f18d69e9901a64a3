"""The synthetic motion dataset, easy (v2) and hard (v3): reversal pairs, motion semantics, determinism, the
folder layout, the clip sampler on hard videos and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from vidconv_deploy.cli.make_data import main
from vidconv_deploy.data import synthetic_hard as hard
from vidconv_deploy.data.dataset import eval_clips, train_clips
from vidconv_deploy.data.sampling import SSV2, clip_span, eval_indices
from vidconv_deploy.data.synthetic import (
    CLASSES,
    MOTIONS,
    SPLITS,
    SyntheticSpec,
    _trajectory,
    generate,
    pick_encoder,
    render,
    reversed_class,
)
from vidconv_deploy.errors import UserError

TINY = SyntheticSpec(seed=3, train=12, val=3, test=2, size=32, min_frames=12, max_frames=16)


def decode_all(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_classes_come_in_reversal_pairs() -> None:
    assert len(CLASSES) == 10 and len(set(CLASSES)) == 10
    assert [reversed_class(i) for i in range(10)] == [1, 0, 3, 2, 5, 4, 7, 6, 9, 8]
    for label in range(0, len(CLASSES), 2):
        forward = render(label, 14, 32, np.random.default_rng(7))
        backward = render(reversed_class(label), 14, 32, np.random.default_rng(7))
        assert forward.shape == (14, 32, 32, 3) and forward.dtype == np.uint8
        np.testing.assert_array_equal(backward, forward[::-1])  # exactly the same video, played backwards


def test_motions_do_what_their_names_say() -> None:
    rising = lambda a: bool(np.all(np.diff(a) > 0))  # noqa: E731
    for seed in range(5):
        right = _trajectory("move_right", 50, 96, np.random.default_rng(seed))
        down = _trajectory("move_down", 50, 96, np.random.default_rng(seed))
        turn = _trajectory("rotate_clockwise", 50, 96, np.random.default_rng(seed))
        grow = _trajectory("grow", 50, 96, np.random.default_rng(seed))
        appear = _trajectory("appear", 50, 96, np.random.default_rng(seed))
        assert rising(right.cx) and right.cx[-1] - right.cx[0] >= 0.3 * 96
        assert rising(down.cy) and down.cy[-1] - down.cy[0] >= 0.3 * 96
        assert rising(turn.angle)  # pixel y points down: a growing angle is clockwise on screen
        heading = np.unwrap(np.arctan2(turn.cy - 48, turn.cx - 48))  # and the path circles the centre that way
        assert rising(heading) and heading[-1] - heading[0] >= np.radians(150)
        assert rising(grow.radius) and grow.radius[-1] / grow.radius[0] >= 2.2
        assert appear.alpha[0] == 0 and appear.alpha[-1] == 1 and np.all(np.diff(appear.alpha) >= 0)
    assert [pair[0] for pair in MOTIONS] == list(CLASSES[::2])


def test_rendered_shape_follows_its_path() -> None:
    """Pixels, not just geometry: the shape's centroid in a move_right video travels right."""
    frames = render(0, 20, 64, np.random.default_rng(1)).astype(float)
    background = np.median(frames, axis=0)
    changed = np.abs(frames - background).sum(axis=-1) > 60
    xs = np.arange(64)[None, None, :]
    centroid = (changed * xs).sum(axis=(1, 2)) / changed.sum(axis=(1, 2))
    assert centroid[-1] - centroid[0] > 10 and np.all(np.diff(centroid) > 0)


def test_generation_is_deterministic_and_independent_of_jobs(tmp_path: Path) -> None:
    one = generate(tmp_path / "one", TINY, jobs=1)
    two = generate(tmp_path / "two", TINY, jobs=2)
    assert one.codec == two.codec == pick_encoder()
    for name in ("classes.txt", "dataset.json", *(f"{s}.txt" for s in SPLITS)):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    for rel in sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.mp4")):
        np.testing.assert_array_equal(decode_all(tmp_path / "one" / rel), decode_all(tmp_path / "two" / rel))
    other = generate(tmp_path / "other", SyntheticSpec(**{**TINY.__dict__, "seed": 4}))
    assert (tmp_path / "other" / "train.txt").read_bytes() != (tmp_path / "one" / "train.txt").read_bytes()
    assert other.counts == {"train": 12, "val": 3, "test": 2}


def test_dataset_folder_layout(tmp_path: Path) -> None:
    generate(tmp_path, TINY, jobs=1)
    assert (tmp_path / "classes.txt").read_text().split() == list(CLASSES)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["protocol"] == "ssv2" and meta["seed"] == 3 and meta["counts"] == {"train": 12, "val": 3, "test": 2}
    assert meta["size"] == [32, 32] and meta["frames"] == {"min": 12, "max": 16} and meta["generator_version"] == 2
    lines = (tmp_path / "train.txt").read_text().splitlines()
    assert lines[0].startswith("train/00000.mp4 ") and len(lines) == 12
    labels = [int(line.split()[1]) for line in lines]
    assert sorted(np.bincount(labels, minlength=10)) == [1] * 8 + [2] * 2  # balanced: 12 over 10 classes
    for line in lines:
        frames = decode_all(tmp_path / line.split()[0])
        assert frames.shape[1:] == (32, 32, 3) and 12 <= len(frames) <= 16
    assert not list(tmp_path.rglob("*.tmp"))


def test_datasets_on_generated_data(tmp_path: Path) -> None:
    generate(tmp_path, TINY, jobs=1)
    train = train_clips(tmp_path, frames=4, image_size=(32, 32), seed=0, progress=False)  # protocol from dataset.json
    assert train.protocol.name == "ssv2" and train.protocol.frames == 4
    first = list(train)
    assert len(first) == 12 and tuple(first[0][0].shape) == (4, 3, 32, 32)
    again = list(train)
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(first, again))
    train.set_epoch(1)
    assert [label for _, label in train] != [label for _, label in first]  # another order
    test = eval_clips(tmp_path, frames=9, image_size=32, split="val", progress=False)
    views = list(test)
    assert len(views) == 3 and tuple(views[0][0].shape) == (2, 9, 3, 32, 32)
    assert not train.skips.counts() and not test.skips.counts()


def test_encoder_fallback(tmp_path: Path) -> None:
    result = generate(tmp_path, SyntheticSpec(train=2, val=0, test=0, size=32, min_frames=9, max_frames=9),
                      encoders=("no-such-encoder", "mpeg4"))
    assert result.codec == "mpeg4" and json.loads((tmp_path / "dataset.json").read_text())["codec"] == "mpeg4"
    assert decode_all(tmp_path / "train/00000.mp4").shape == (9, 32, 32, 3)
    with pytest.raises(UserError, match="has none of the encoders nope1, nope2: install the PyAV binary wheel"):
        pick_encoder(("nope1", "nope2"))


def test_cli_refuses_a_foreign_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "holiday.mp4").write_bytes(b"not ours")
    assert main(["--out", str(tmp_path), "--train", "1"]) == 2  # our folder names, but not our files
    assert "is not empty and holds no dataset" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["--out", str(tmp_path), "--train", "1", "--val", "0", "--test", "0", "--size", "32"]) == 2
    err = capsys.readouterr().err.strip()  # one line, no progress bar, no traceback
    assert err == (f"vidconv-make-data: error: --out {tmp_path} is not empty and holds no dataset from "
                   f"vidconv-make-data: choose an empty or new folder, or pass --force to write into it")
    assert main(["--out", str(tmp_path / "notes.txt"), "--train", "1"]) == 2
    assert capsys.readouterr().err.strip().endswith("is a file: give a folder path")
    assert main(["--out", str(tmp_path), "--size", "33"]) == 2
    assert "use an even size of at least 32" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "train").iterdir()] == ["holiday.mp4"]
    assert main(["--out", str(tmp_path), "--train", "1", "--val", "0", "--test", "0", "--size", "32", "--jobs", "1",
                 "--force"]) == 0
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "train/00000.mp4").is_file()


def test_cli_writes_and_regenerates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--out", str(tmp_path), "--val", "1", "--test", "1", "--size", "32", "--jobs", "1", "--seed", "5"]
    assert main([*args, "--train", "3"]) == 0
    assert "5 videos (32x32, 48-64 frames at 12 fps" in capsys.readouterr().err
    assert len((tmp_path / "train.txt").read_text().splitlines()) == 3
    (tmp_path / "train" / "mine.mp4").write_bytes(b"a user's file")
    assert main([*args, "--train", "2"]) == 0  # a previous dataset: no --force needed, stale videos go
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["00000.mp4", "00001.mp4", "mine.mp4"]
    assert len((tmp_path / "train.txt").read_text().splitlines()) == 2
    # an interrupted run (videos, no lists yet) is ours too
    for name in ("dataset.json", "train.txt", "val.txt", "test.txt", "classes.txt", "train/mine.mp4"):
        (tmp_path / name).unlink()
    assert main([*args, "--train", "1"]) == 0


def test_hard_classes_come_in_reversal_pairs() -> None:
    """Every hard class needs frame order: its video played backwards is exactly its partner class's video."""
    assert len(hard.CLASSES) == 16 and len(set(hard.CLASSES)) == 16
    assert [pair[0] for pair in hard.MOTIONS] == list(hard.CLASSES[::2])
    for label in range(0, 16, 2):
        forward = hard.render(label, 20, 32, np.random.default_rng(label))
        backward = hard.render(reversed_class(label), 20, 32, np.random.default_rng(label))
        assert forward.shape == (20, 32, 32, 3) and forward.dtype == np.uint8
        np.testing.assert_array_equal(backward, forward[::-1])
        assert not np.array_equal(forward, hard.render(label, 20, 32, np.random.default_rng(label + 100)))


def test_hard_motions_are_fine_and_off_centre() -> None:
    """Slow and fast keep a 1.5x gap, directions stay 33 degrees apart, and the action starts anywhere."""
    starts, speeds, headings = [], {}, {}
    for seed in range(40):
        action = hard._action(80, np.random.default_rng(seed))
        p = action.progress
        assert 44 <= action.length <= 60 and np.all(np.diff(p) >= 0)
        assert np.all(p[: action.start + 1] == 0) and np.all(p[action.start + action.length - 1:] == 1)
        starts.append(action.start)
        for motion in hard.MOVES:
            path = hard._path(motion, action, 96, np.random.default_rng(seed))
            dx, dy = path.cx[-1] - path.cx[0], path.cy[-1] - path.cy[0]
            speeds.setdefault(motion, []).append(np.hypot(dx, dy) / 96 / action.length)
            headings.setdefault(motion, []).append(np.degrees(np.arctan2(dy, dx)))
            assert 0.08 * 96 - 1e-9 <= min(path.cx.min(), path.cy.min()) <= max(path.cx.max(), path.cy.max()) <= 0.92 * 96 + 1e-9
    assert min(starts) <= 4 and max(starts) >= 24  # early and late, not centred (80 frames, centred would be 10-18)
    assert max(speeds["move_right_slow"]) <= 0.0065 < 0.0100 <= min(speeds["move_right_fast"])
    longest = hard.Action(0, 60, np.linspace(0.0, 1.0, 60))  # 75 % of 80 frames: the longest default action
    for seed in range(200):  # the fastest moves still fit the frame
        path = hard._path("move_right_fast", longest, 64, np.random.default_rng(seed))
        assert 0.08 * 64 - 1e-9 <= path.cx.min() and path.cx.max() <= 0.92 * 64 + 1e-9
    for motion, (heading, _) in hard.MOVES.items():
        assert np.all(np.abs(np.array(headings[motion]) - heading) <= hard.DIRECTION_JITTER + 1e-9), motion


def test_ssv2_test_clips_cover_every_frame_of_hard_videos() -> None:
    """The action may sit anywhere in a hard video: the two SSv2 test clips must together see all of it."""
    for num_frames in range(hard.FRAMES[0], hard.FRAMES[1] + 1):
        clips = eval_indices(SSV2, num_frames)
        seen = {int(i) for start in clips[:, 0] for i in range(start, start + clip_span(SSV2.frames, 6))}
        assert seen == set(range(num_frames)), num_frames


def test_hard_generation_is_deterministic_and_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI and the library write the same bytes for the same seed (the jobs-independence is the easy test's)."""
    args = ["--difficulty", "hard", "--seed", "3", "--train", "2", "--val", "1", "--test", "0", "--size", "32"]
    assert main(["--out", str(tmp_path / "cli"), *args, "--jobs", "1"]) == 0
    assert "3 videos (32x32, 56-80 frames at 12 fps" in capsys.readouterr().err
    meta = json.loads((tmp_path / "cli" / "dataset.json").read_text())
    assert meta["generator_version"] == 3 and meta["difficulty"] == "hard" and meta["frames"] == {"min": 56, "max": 80}
    assert meta["classes"] == list(hard.CLASSES) and meta["reversed_class"][:4] == [1, 0, 3, 2]
    assert (tmp_path / "cli" / "classes.txt").read_text().split() == list(hard.CLASSES)
    generate(tmp_path / "lib", SyntheticSpec(seed=3, train=2, val=1, test=0, size=32, difficulty="hard"), jobs=1)
    for name in ("classes.txt", "dataset.json", *(f"{s}.txt" for s in SPLITS)):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "lib" / name).read_bytes(), name
    videos = sorted(p.relative_to(tmp_path / "cli") for p in (tmp_path / "cli").rglob("*.mp4"))
    assert len(videos) == 3
    for rel in videos:
        frames = decode_all(tmp_path / "cli" / rel)
        assert frames.shape[1:] == (32, 32, 3) and 56 <= len(frames) <= 80
        np.testing.assert_array_equal(frames, decode_all(tmp_path / "lib" / rel))
    with pytest.raises(UserError, match="unknown difficulty 'medium': use one of easy, hard"):
        SyntheticSpec(difficulty="medium")
