"""A synthetic video dataset whose classes only temporal order tells apart, in two difficulties.

``easy`` (generator version 2, the default, for quick tests and demos) is described below; ``hard``
(version 3, :mod:`vidconv_deploy.data.synthetic_hard`) keeps its principle and adds 16 finer classes,
longer videos with the action at a random time, distractors, camera motion, occlusion, blur and noise,
so that a model's losses (quantization, variants) can show. Both write the same folder layout.

Each video shows one shape (circle, square or triangle, its front cap in a contrasting colour so
that a circle's rotation shows) on a random textured background with a little per-frame noise. The
class is what the shape does over time, and the classes come in pairs where one is the other
played backwards: move right / left, move down / up, rotate clockwise / counter-clockwise (the
shape circles the frame centre, turning with its path), grow / shrink, appear / disappear. A video of the second class of a pair is rendered exactly as
the first and then reversed, so reversing a video maps its class to the partner, and a model
that ignores frame order (the paper's Table 10 shuffles frames) can at best tell the pair: ~50 %.

Shape, colours, background and the random draws behind them do not depend on the class, so a
still frame never tells the direction within a pair. Across pairs it can hint: an empty frame
only comes from appear / disappear, a very small or very large shape from grow / shrink.

Determinism: video ``i`` of split ``s`` is drawn from ``default_rng([seed, s, i])``; the same seed
gives byte-identical annotation lists and identical decoded frames.

Layout written by :func:`generate` (paths in the lists are relative to the dataset folder)::

    classes.txt  train.txt  val.txt  test.txt  dataset.json
    train/00000.mp4 ...  val/...  test/...

The easy videos are 48-64 frames at 12 fps, like Something-Something V2 clips (2-6 s at 12 fps), the
hard ones 56-80; the dataset declares the SSv2 sampling protocol in ``dataset.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import av
import numpy as np

from vidconv_deploy.atomic import atomic_path, nearest_existing, write_text
from vidconv_deploy.data import synthetic_hard
from vidconv_deploy.data.shapes import SHAPES, paint_shape, smooth_noise
from vidconv_deploy.errors import UserError

GENERATOR = "vidconv-synthetic-motion"
SPLITS = ("train", "val", "test")
#: The rendered motions; each one's class is followed by its reversal's class.
MOTIONS = (
    ("move_right", "move_left"),
    ("move_down", "move_up"),
    ("rotate_clockwise", "rotate_counterclockwise"),
    ("grow", "shrink"),
    ("appear", "disappear"),
)
CLASSES = tuple(name for pair in MOTIONS for name in pair)
#: Encoders in order of preference; the wheel's FFmpeg may lack libx264 (GPL), mpeg4 is always built in.
ENCODERS = ("libx264", "mpeg4")
PROTOCOL = "ssv2"


def reversed_class(label: int) -> int:
    """The class of a video of class ``label`` played backwards."""
    return label ^ 1


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: the difficulty, the seed, the split sizes, the frame size and rate, and the range of frame counts.

    ``min_frames``/``max_frames`` left out take the difficulty's default lengths.
    """

    seed: int = 0
    # 2400 training videos: 20 min on 2 cores is ~50k training clips for vic-nano (~45 clips/s with
    # decoding), so ~20 epochs of distinct videos; generating all 3000 takes ~2 CPU-minutes.
    train: int = 2400
    val: int = 200
    test: int = 400
    size: int = 96
    fps: int = 12
    min_frames: int | None = None
    max_frames: int | None = None
    difficulty: str = "easy"

    def __post_init__(self) -> None:
        if self.difficulty not in DIFFICULTIES:
            raise UserError(f"unknown difficulty {self.difficulty!r}: use one of {', '.join(DIFFICULTIES)}")
        default_min, default_max = DIFFICULTIES[self.difficulty].frames
        object.__setattr__(self, "min_frames", default_min if self.min_frames is None else self.min_frames)
        object.__setattr__(self, "max_frames", default_max if self.max_frames is None else self.max_frames)
        if min(self.train, self.val, self.test) < 0 or self.seed < 0:
            raise UserError("split sizes and the seed must not be negative")
        if self.size < 32 or self.size % 2:
            raise UserError(f"size {self.size} is not supported: use an even size of at least 32 (yuv420p halves it)")
        if self.fps < 1 or not 9 <= self.min_frames <= self.max_frames:
            raise UserError("fps must be positive and 9 <= min_frames <= max_frames (a clip needs 9 frames)")

    def count(self, split: str) -> int:
        return getattr(self, split)


# ---------------------------------------------------------------------------------------------
# Rendering


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """Per-frame geometry: centre (pixels), circumradius (pixels), angle (radians, clockwise on screen), opacity."""

    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    angle: np.ndarray
    alpha: np.ndarray


def _trajectory(motion: str, num_frames: int, size: int, rng: np.random.Generator) -> Trajectory:
    """The geometry of one of the rendered motions (the first of each pair in :data:`MOTIONS`)."""
    t = np.arange(num_frames, dtype=np.float64)
    u = t / (num_frames - 1)
    # Common draws first, in a fixed order, so every motion sees the same kind of scene.
    cx = np.full_like(t, size * rng.uniform(0.3, 0.7))
    cy = np.full_like(t, size * rng.uniform(0.3, 0.7))
    radius = np.full_like(t, size * rng.uniform(0.12, 0.20))
    angle = np.full_like(t, rng.uniform(0.0, 2 * math.pi))
    alpha = np.ones_like(t)
    if motion in ("move_right", "move_down"):
        dist = size * rng.uniform(0.45, 0.6)
        along = size * (0.5 + rng.uniform(-0.03, 0.03)) + dist * (u - 0.5)
        across = size * rng.uniform(0.3, 0.7) + size * rng.uniform(-0.05, 0.05) * u
        cx, cy = (along, across) if motion == "move_right" else (across, along)
    elif motion == "rotate_clockwise":
        # The shape circles the frame centre and turns with its path. Pixel y points down, so a growing
        # angle is clockwise on screen. Circling, not spinning in place: a spinning shape changes too
        # few pixels for vic-nano at 64x64, which stayed at chance on this pair (every other pair was
        # learned perfectly). 4-6 degrees per frame keep a sampled step (stride <= 7) under 45 degrees.
        turn = np.radians(rng.uniform(4.0, 6.0)) * t
        orbit, start = size * rng.uniform(0.20, 0.28), rng.uniform(0.0, 2 * math.pi)
        cx = size / 2 + orbit * np.cos(start + turn)
        cy = size / 2 + orbit * np.sin(start + turn)
        angle = angle + turn
    elif motion == "grow":
        radius = size * rng.uniform(0.07, 0.10) * rng.uniform(2.2, 3.0) ** u
    elif motion == "appear":
        # The fade sits in the middle 40-60 % so every SSv2 training clip (>= 64 % of the video) sees it.
        middle = rng.uniform(0.4, 0.6) * (num_frames - 1)
        alpha = np.clip((t - middle) / rng.uniform(4.0, 10.0) + 0.5, 0.0, 1.0)
    else:
        raise ValueError(f"unknown motion {motion!r}")
    return Trajectory(cx, cy, radius, angle, alpha)


def render(label: int, num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Frames of one video of class ``label``: ``(num_frames, size, size, 3)`` uint8 RGB.

    The draws from ``rng`` do not depend on which class of a pair is asked for: the second class
    is the first one's frames reversed, exactly.
    """
    motion = MOTIONS[label // 2][0]
    # A dark background and a light shape, each of a random colour. Fixing which one is lighter
    # matters for a model trained from scratch in minutes: with either polarity (and background
    # colours over the whole range) vic-nano stayed at chance for hundreds of steps longer in our
    # tests, because its early layers are nearly linear and cannot yet see both signs of an edge.
    base = rng.uniform(20.0, 100.0, 3)
    background = base + 20.0 * smooth_noise(rng, size, 5) + rng.normal(0.0, 4.0, (size, size, 1))
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = rng.uniform(110.0, 255.0, 3)
    while np.linalg.norm(colour - base) < 150.0:  # clearly visible: motion, not contrast, is the task
        colour = rng.uniform(110.0, 255.0, 3)
    marker = (colour + base) / 2  # the cap: a half tone, distinct from both the body and the background
    path = _trajectory(motion, num_frames, size, rng)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5)
    background = background.astype(np.float32)
    colour, marker = colour.astype(np.float32), marker.astype(np.float32)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):  # frame by frame: small arrays stay in cache (measured 24 vs 35 ms a video)
        frame = paint_shape(background, xs, ys, shape, (path.cx[t], path.cy[t]), path.angle[t], path.radius[t],
                            path.alpha[t], colour, marker)
        frame += rng.standard_normal((size, size, 1), dtype=np.float32) * np.float32(3.0)
        frames[t] = np.clip(np.rint(frame), 0, 255)
    return frames[::-1].copy() if label % 2 else frames


@dataclasses.dataclass(frozen=True)
class Difficulty:
    """One version of the generator: its classes (in reversal pairs), its renderer and default video lengths."""

    version: int
    classes: tuple[str, ...]
    render: Callable[[int, int, int, np.random.Generator], np.ndarray]
    frames: tuple[int, int]
    note: str  # how its videos suit the protocol, for dataset.json


DIFFICULTIES = {
    # 2: light shape on a dark background, longer moves, rotation as circling (vic-nano learns it in minutes)
    "easy": Difficulty(2, CLASSES, render, (48, 64), "videos are 48-64 frames at 12 fps like SSv2's"),
    "hard": Difficulty(3, synthetic_hard.CLASSES, synthetic_hard.render, synthetic_hard.FRAMES,
                       "videos are 56-80 frames at 12 fps, the action fills 55-75 % of a video at a random time; "
                       "the 2 test clips (49 frames) cover every frame of a video up to 98 frames"),
}


# ---------------------------------------------------------------------------------------------
# Encoding


def pick_encoder(preferred: tuple[str, ...] = ENCODERS) -> str:
    """The first encoder in ``preferred`` that this PyAV build has."""
    for name in preferred:
        try:
            av.Codec(name, "w")
        except ValueError:  # av.codec.codec.UnknownCodecError
            continue
        return name
    raise UserError(f"this PyAV/FFmpeg build has none of the encoders {', '.join(preferred)}: "
                    f"install the PyAV binary wheel (pip install av)")


def write_mp4(path: str | os.PathLike[str], frames: np.ndarray, fps: int, codec: str) -> None:
    """Encode uint8 RGB frames ``(T, H, W, 3)`` to an .mp4 (yuv420p), atomically.

    One encoder thread per video (generation parallelises over videos instead). x264's macroblock
    tree is off: with it on, this wheel's libx264 gave different bitstreams for the same frames in
    different processes (measured: 3 runs of 40 videos, 3 different results); with ``mbtree=0``
    every run was identical (6 processes x 40 videos). ``tests/test_synthetic_data.py`` checks this.
    """
    height, width = frames.shape[1:3]
    with atomic_path(path) as tmp, av.open(os.fspath(tmp), "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            # CRF 26 (x264's default is 23): without mb-tree, 23 spends ~3x the bits on the frame noise.
            # Measured per 96x96 video: ~17 kB, 12 ms to encode with veryfast (24 ms with fast, 1 kB
            # smaller), decoded pixels within ~4 of the rendered ones on average.
            stream.options = {"crf": "26", "preset": "veryfast", "x264-params": "mbtree=0"}
        else:  # mpeg4 has no CRF; a generous bit rate keeps these tiny frames near lossless
            stream.bit_rate = 2_000_000
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


# ---------------------------------------------------------------------------------------------
# The dataset folder

OWN_FILES = {"classes.txt", "dataset.json", *(f"{s}.txt" for s in SPLITS), *SPLITS}
#: Names this generator writes inside a split folder: videos and the atomic writes' temporary files.
OWN_VIDEO = re.compile(r"\d{5}\.mp4|\.\d{5}\.mp4\..*\.tmp")


def is_dataset_dir(path: Path) -> bool:
    """Whether ``path`` holds a dataset from this generator: complete, or an interrupted run (only our names)."""
    meta = path / "dataset.json"
    if meta.is_file():
        try:
            return json.loads(meta.read_text(encoding="utf-8")).get("generator") == GENERATOR
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            return False
    return all(p.name in OWN_FILES for p in path.iterdir()) and all(
        OWN_VIDEO.fullmatch(p.name) for split in SPLITS if (path / split).is_dir() for p in (path / split).iterdir())


def _check_writable(out: Path) -> None:
    """Refuse a folder (or, if it does not exist yet, its nearest existing parent) this process cannot write.

    Checked up front so that a read-only folder is one line before any video is rendered, not a
    traceback from a worker process; ``os.access`` also answers for read-only mounts, where even
    root cannot write.
    """
    folder = nearest_existing(out)
    if not folder.is_dir():
        raise UserError(f"--out {out} is under {folder}, which is a file: give a folder path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {folder} (read-only): choose a writable --out folder")


def check_out_dir(out: Path, force: bool) -> bool:
    """Refuse a non-empty folder that is not a previous dataset unless ``force``, or one that cannot be written; True if it is one."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder path")
    _check_writable(out)
    if not out.exists() or not any(out.iterdir()):
        return False
    if is_dataset_dir(out):
        return True
    if not force:
        raise UserError(f"--out {out} is not empty and holds no dataset from vidconv-make-data: "
                        f"choose an empty or new folder, or pass --force to write into it")
    return False


def split_labels(spec: SyntheticSpec, split_no: int) -> np.ndarray:
    """Balanced labels for one split (each class count differs by at most one), shuffled by the seed."""
    n = spec.count(SPLITS[split_no])
    labels = np.arange(n) % len(DIFFICULTIES[spec.difficulty].classes)
    return np.random.default_rng([spec.seed, split_no]).permutation(labels)


def video_frames(spec: SyntheticSpec, split_no: int, index: int, label: int) -> np.ndarray:
    """The frames of video ``index`` of a split; its own generator makes it independent of the others."""
    rng = np.random.default_rng([spec.seed, split_no, index])
    num_frames = int(rng.integers(spec.min_frames, spec.max_frames + 1))
    return DIFFICULTIES[spec.difficulty].render(label, num_frames, spec.size, rng)


def metadata(spec: SyntheticSpec, codec: str) -> dict:
    """``dataset.json``: how the data was made and how to sample it."""
    difficulty = DIFFICULTIES[spec.difficulty]
    return {
        "generator": GENERATOR,
        "generator_version": difficulty.version,
        "difficulty": spec.difficulty,
        "seed": spec.seed,
        "counts": {s: spec.count(s) for s in SPLITS},
        "classes": list(difficulty.classes),
        "reversed_class": [reversed_class(i) for i in range(len(difficulty.classes))],
        "size": [spec.size, spec.size],
        "fps": spec.fps,
        "frames": {"min": spec.min_frames, "max": spec.max_frames},
        "codec": codec,
        "pix_fmt": "yuv420p",
        "protocol": PROTOCOL,
        "protocol_note": "sample with the SSv2 protocol (train stride 5-7, 2 test clips at stride 6, "
                         "short videos s_T = min(5, (N-1)//8)): " + difficulty.note,
    }


@dataclasses.dataclass(frozen=True)
class GenerateResult:
    out: Path
    codec: str
    seconds: float
    counts: dict[str, int]


def video_name(split_no: int, index: int) -> str:
    """A video's path relative to the dataset folder, as the annotation lists write it."""
    return f"{SPLITS[split_no]}/{index:05d}.mp4"


def _write_video(out: Path, spec: SyntheticSpec, split_no: int, index: int, label: int, codec: str) -> None:
    """Render and write one video (top-level so worker processes can run it)."""
    write_mp4(out / video_name(split_no, index), video_frames(spec, split_no, index, label), spec.fps, codec)


def generate(
    out: str | os.PathLike[str],
    spec: SyntheticSpec,
    force: bool = False,
    jobs: int = 1,
    on_video: Callable[[], None] | None = None,
    encoders: tuple[str, ...] = ENCODERS,
) -> GenerateResult:
    """Write the dataset into ``out``: videos first (each atomically), then the lists, ``dataset.json`` last.

    ``jobs`` > 1 renders and encodes in that many processes; every video has its own seed, so the
    result does not depend on it. ``on_video()`` is called after each video (progress). Regenerating
    over a previous dataset removes its lists first and afterwards its videos the new one lacks.
    """
    out = Path(out)
    previous = check_out_dir(out, force)
    codec = pick_encoder(encoders)
    start = time.perf_counter()
    if previous:  # an interrupted regeneration must not look like a complete dataset
        for name in ("dataset.json", "classes.txt", *(f"{s}.txt" for s in SPLITS)):
            (out / name).unlink(missing_ok=True)
    tasks = [(split_no, index, int(label)) for split_no in range(len(SPLITS))
             for index, label in enumerate(split_labels(spec, split_no))]
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
    if jobs > 1:
        # spawn, not fork: the parent may run threads (the progress display) that fork would copy mid-state.
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_write_video, out, spec, *task, codec) for task in tasks]
            try:
                for future in as_completed(futures):
                    future.result()
                    if on_video is not None:
                        on_video()
            except BaseException:
                pool.shutdown(cancel_futures=True)  # do not render the rest after a failure or Ctrl-C
                raise
    else:
        for task in tasks:
            _write_video(out, spec, *task, codec)
            if on_video is not None:
                on_video()
    if previous:  # only our own file names: anything else a user put there stays
        written = {video_name(split_no, index) for split_no, index, _ in tasks}
        for stale in (p for split in SPLITS for p in (out / split).iterdir() if OWN_VIDEO.fullmatch(p.name)):
            if stale.relative_to(out).as_posix() not in written:
                stale.unlink()
    write_text(out / "classes.txt", "".join(f"{name}\n" for name in DIFFICULTIES[spec.difficulty].classes))
    for split_no, split in enumerate(SPLITS):
        lines = (f"{video_name(split_no, index)} {label}\n" for s_no, index, label in tasks if s_no == split_no)
        write_text(out / f"{split}.txt", "".join(lines))
    write_text(out / "dataset.json", json.dumps(metadata(spec, codec), indent=2) + "\n")
    return GenerateResult(out, codec, time.perf_counter() - start, {s: spec.count(s) for s in SPLITS})
