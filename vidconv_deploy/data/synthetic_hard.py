"""Version 3 ("hard") of the synthetic motion videos: version 2's idea with the nuisances of real clips.

Why: every shipped model scored 100 % on version 2, so no measurement on it could show a
quantization or variant loss. Version 3 keeps version 2's principle (classes in time-reversed pairs;
a video of the second class of a pair is the first one's played backwards, so only frame order tells
them apart) and adds:

- finer classes, 16 in all: horizontal moves come slow and fast (only speed separates them); moves
  go in four directions 45 degrees apart (only the approach angle separates neighbours);
- the action fills 55-75 % of a 56-80-frame video and starts anywhere in it; the shape rests before
  and after, so the clip sampler has to find it (the SSv2 protocol's 2 test clips of 49 frames cover
  every frame of a video up to 98 frames long);
- a move accelerates or decelerates; at most one distractor shape, drawn like the actor, drifts and
  wobbles; the camera pans and shakes; 40 % of the videos have a bar that hides part of the scene;
  Gaussian blur and sensor noise of a random strength.

Tuned on vic-nano's training (the target: 80-95 % top-1 within 20 minutes on 2 cores). The first
draft (action in 35-50 % of 64-96 frames, one or two distractors, noise up to sigma 8) left it at
chance after an epoch and, its noisy videos being 3x the bits, cost ~3x the decoding; the second
(action in 45-65 % of 56-80 frames, up to two distractors, rotation orbits of 16-22 %) reached 61 %
validation top-1 after 8 of 12 epochs.

Each nuisance is drawn the same way for both classes of a pair and, but for the curve of the
acceleration (see :func:`_action`), is as likely as its own reversal (a pan or a drift played
backwards is another draw of the same kind), so reversing a video maps its class exactly to the
partner and nothing but order tells them apart.
As in version 2 the actor is lighter than the background (see :func:`render`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from vidconv_deploy.data.shapes import SHAPES, hat_weights, paint_shape

#: The rendered motions; each one's class is followed by its reversal's class.
MOTIONS = (
    ("move_right_slow", "move_left_slow"),
    ("move_right_fast", "move_left_fast"),
    ("move_down", "move_up"),
    ("move_down_right", "move_up_left"),
    ("move_down_left", "move_up_right"),
    ("rotate_clockwise", "rotate_counterclockwise"),
    ("grow", "shrink"),
    ("appear", "disappear"),
)
CLASSES = tuple(name for pair in MOTIONS for name in pair)
#: Moves: direction in degrees (pixel y points down, so 90 is down) and mean speed range in frame sizes per frame.
#: Slow and fast leave a gap of 1.5x; the other directions take speeds from both.
MOVES = {
    "move_right_slow": (0.0, (0.0045, 0.0065)),
    "move_right_fast": (0.0, (0.0100, 0.0140)),
    "move_down": (90.0, (0.0045, 0.0140)),
    "move_down_right": (45.0, (0.0045, 0.0140)),
    "move_down_left": (135.0, (0.0045, 0.0140)),
}
DIRECTION_JITTER = 6.0  # degrees either side: neighbouring directions stay >= 33 degrees apart
ACTION_SHARE = (0.55, 0.75)  # the action's share of the video
FRAMES = (56, 80)  # default video lengths: 4.5-7 s at 12 fps


@dataclasses.dataclass(frozen=True)
class Action:
    """When the action happens: ``progress[t]`` is 0 before it, rises to 1 during it (eased), 1 after."""

    start: int
    length: int
    progress: np.ndarray


def _action(num_frames: int, rng: np.random.Generator) -> Action:
    """A window of 55-75 % of the video at a random time, with an accelerating or decelerating progress."""
    length = max(2, round(num_frames * rng.uniform(*ACTION_SHARE)))
    start = int(rng.integers(0, num_frames - length + 1))
    # progress**ease: accelerating (ease > 1) as likely as decelerating (ease < 1). Played backwards a
    # move decelerates or accelerates too, along 1 - (1 - p)**ease rather than this family's curve: a
    # difference of curve shape no 9-frame clip can resolve (the one nuisance that is not exactly
    # reversal-symmetric in distribution).
    ease = math.exp(rng.uniform(-0.25, 0.25))
    linear = np.clip((np.arange(num_frames) - start) / (length - 1), 0.0, 1.0)
    return Action(start, length, linear**ease)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Per-frame geometry of the actor in scene pixels: centre, circumradius, angle (clockwise), opacity."""

    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    angle: np.ndarray
    alpha: np.ndarray


def _path(motion: str, action: Action, size: int, rng: np.random.Generator) -> Geometry:
    """The actor's geometry for one of the rendered motions (the first of each pair in :data:`MOTIONS`)."""
    p = action.progress
    ones = np.ones_like(p)
    cx, cy = size * rng.uniform(0.3, 0.7) * ones, size * rng.uniform(0.3, 0.7) * ones
    radius = size * rng.uniform(0.10, 0.15) * ones
    angle = rng.uniform(0.0, 2 * math.pi) * ones
    alpha = ones
    if motion in MOVES:
        heading, speeds = MOVES[motion]
        heading = math.radians(heading + rng.uniform(-DIRECTION_JITTER, DIRECTION_JITTER))
        # At most 84 % of the frame, as far as the defaults go (a 60-frame fast move); longer actions are capped.
        dist = size * min(0.84, rng.uniform(*speeds) * action.length)
        ux, uy = math.cos(heading), math.sin(heading)
        # The midpoint keeps both ends of the move inside 8-92 % of the frame.
        half_x, half_y = abs(ux) * dist / 2, abs(uy) * dist / 2
        mx = rng.uniform(0.08 * size + half_x, 0.92 * size - half_x)
        my = rng.uniform(0.08 * size + half_y, 0.92 * size - half_y)
        cx, cy = mx + ux * dist * (p - 0.5), my + uy * dist * (p - 0.5)
    elif motion == "rotate_clockwise":
        # Circling, not spinning in place (see version 2): 4-6 degrees a frame of the action.
        turn = np.radians(rng.uniform(4.0, 6.0)) * action.length * p
        orbit, start = size * rng.uniform(0.20, 0.26), rng.uniform(0.0, 2 * math.pi)
        ox, oy = size * rng.uniform(0.4, 0.6), size * rng.uniform(0.4, 0.6)
        cx, cy = ox + orbit * np.cos(start + turn), oy + orbit * np.sin(start + turn)
        angle = angle + turn
    elif motion == "grow":
        radius = size * rng.uniform(0.06, 0.09) * rng.uniform(2.0, 2.8) ** p
    elif motion == "appear":
        fade = rng.uniform(4.0, 10.0) / action.length  # the fade sits in the middle of the action window
        alpha = np.clip((p - 0.5) / fade + 0.5, 0.0, 1.0)
    else:
        raise ValueError(f"unknown motion {motion!r}")
    return Geometry(cx, cy, radius, angle, alpha)


class _Texture:
    """A smooth random texture over the scene, wider than the frame by ``margin`` so the camera can pan over it."""

    def __init__(self, rng: np.random.Generator, size: int, cells: int, margin: float) -> None:
        self.grid, self.cells, self.size, self.margin = rng.normal(0.0, 1.0, (cells, cells, 3)), cells, size, margin

    def view(self, dx: float, dy: float) -> np.ndarray:
        """``(size, size, 3)``: the texture seen with the scene shifted by (dx, dy) pixels on screen."""
        scale = (self.cells - 1) / (self.size + 2 * self.margin)
        centres = np.arange(self.size) + 0.5 + self.margin
        wx, wy = hat_weights((centres - dx) * scale, self.cells), hat_weights((centres - dy) * scale, self.cells)
        return np.stack([wy @ self.grid[..., k] @ wx.T for k in range(3)], axis=-1)


def _light_colour(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """A shape colour clearly lighter than the background ``base`` (motion, not contrast, is the task)."""
    colour = rng.uniform(110.0, 255.0, 3)
    while np.linalg.norm(colour - base) < 150.0:
        colour = rng.uniform(110.0, 255.0, 3)
    return colour


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an ``(H, W, C)`` float32 image, edges repeated."""
    radius = math.ceil(3 * sigma)
    if radius < 1:
        return image
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
    taps /= taps.sum()
    h, w = image.shape[:2]
    padded = np.pad(image, ((radius, radius), (0, 0), (0, 0)), mode="edge")
    image = sum(k * padded[i:i + h] for i, k in enumerate(taps))
    padded = np.pad(image, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    return sum(k * padded[:, i:i + w] for i, k in enumerate(taps))


def render(label: int, num_frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Frames of one version-3 video of class ``label``: ``(num_frames, size, size, 3)`` uint8 RGB.

    The scene (background, distractors, bar, camera, blur, noise) is drawn first, then the action;
    no draw depends on which class of a pair is asked for: the second is the first one reversed.
    A dark background and light shapes, as in version 2: vic-nano learns far slower with either polarity.
    """
    motion = MOTIONS[label // 2][0]
    frame_t = np.arange(num_frames, dtype=np.float64)
    base = rng.uniform(20.0, 100.0, 3)
    margin = 0.2 * size
    coarse, fine = _Texture(rng, size, 6, margin), _Texture(rng, size, 24, margin)
    # Camera: a pan at up to 0.15 % of the frame a frame, centred on the middle frame, and a shake.
    pan_heading, pan_speed = rng.uniform(0.0, 2 * math.pi), size * rng.uniform(0.0, 0.0015)
    shake = size * rng.uniform(0.0, 0.006) * rng.standard_normal((num_frames, 2))
    cam_x = pan_speed * math.cos(pan_heading) * (frame_t - (num_frames - 1) / 2) + shake[:, 0]
    cam_y = pan_speed * math.sin(pan_heading) * (frame_t - (num_frames - 1) / 2) + shake[:, 1]
    distractors = []
    for _ in range(int(rng.integers(0, 2))):
        heading, drift = rng.uniform(0.0, 2 * math.pi), size * rng.uniform(0.0, 0.001)
        wobble, period, phase = size * rng.uniform(0.0, 0.015), rng.uniform(20.0, 40.0), rng.uniform(0.0, 2 * math.pi)
        sway = wobble * np.sin(2 * math.pi * frame_t / period + phase)
        offset = frame_t - (num_frames - 1) / 2
        colour = _light_colour(rng, base)
        distractors.append((
            SHAPES[int(rng.integers(len(SHAPES)))],
            size * rng.uniform(0.15, 0.85) + drift * math.cos(heading) * offset + sway,
            size * rng.uniform(0.15, 0.85) + drift * math.sin(heading) * offset + sway * rng.uniform(-1.0, 1.0),
            rng.uniform(0.0, 2 * math.pi) + np.radians(rng.uniform(-3.0, 3.0)) * frame_t,  # a slow spin
            size * rng.uniform(0.06, 0.11),
            colour.astype(np.float32),
            ((colour + base) / 2).astype(np.float32),
        ))
    bar = None
    if rng.uniform() < 0.4:  # (vertical?, centre, half width, colour) in scene pixels
        bar = (rng.uniform() < 0.5, size * rng.uniform(0.25, 0.75), size * rng.uniform(0.04, 0.07),
               rng.uniform(40.0, 140.0, 3).astype(np.float32))
    blur, noise = size / 96 * rng.uniform(0.0, 1.0), rng.uniform(2.0, 5.0)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = _light_colour(rng, base)
    marker = ((colour + base) / 2).astype(np.float32)
    colour = colour.astype(np.float32)
    path = _path(motion, _action(num_frames, rng), size, rng)

    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):  # frame by frame: small arrays stay in cache (whole-video arrays were slower)
        dx, dy = cam_x[t], cam_y[t]  # screen = scene + (dx, dy)
        frame = (base + 20.0 * coarse.view(dx, dy) + 6.0 * fine.view(dx, dy)).astype(np.float32)
        for d_shape, d_x, d_y, d_angle, d_radius, d_colour, d_marker in distractors:
            frame = paint_shape(frame, xs, ys, d_shape, (d_x[t] + dx, d_y[t] + dy), d_angle[t], d_radius, 1.0,
                                d_colour, d_marker)
        frame = paint_shape(frame, xs, ys, shape, (path.cx[t] + dx, path.cy[t] + dy), path.angle[t], path.radius[t],
                            path.alpha[t], colour, marker)
        if bar is not None:
            vertical, centre, half, bar_colour = bar
            across = (xs - np.float32(centre + dx)) if vertical else (ys - np.float32(centre + dy))
            cover = np.clip(np.float32(half + 0.5) - np.abs(across), 0.0, 1.0)[..., None]
            frame += cover * (bar_colour - frame)
        frame = _blur(frame, blur)
        frame += rng.standard_normal((size, size, 1), dtype=np.float32) * np.float32(noise)
        frames[t] = np.clip(np.rint(frame), 0, 255)
    return frames[::-1].copy() if label % 2 else frames
