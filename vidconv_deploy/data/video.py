"""Decode the frames a clip needs from a video file with PyAV, and turn them into model input.

Decoding streams: frames come out of the decoder one by one, only the requested indices are
converted and kept, and decoding stops after the last one, so a long video never sits in memory.
Each kept frame is resized (shorter side to ``short_side``) and converted to RGB in one libswscale
call, center-cropped to the model's (H, W) and normalised with the ImageNet mean/std on the 0-255
scale, as MMAction2 (the authors' framework) does for its recognisers
(open-mmlab/mmaction2 ``configs/_base_/models/tsm_r50.py``: mean 123.675/116.28/103.53,
std 58.395/57.12/57.375). Rotation metadata and non-square pixels are not applied.

Everything that can be wrong with a file raises :class:`BadVideo` with a short ``reason`` key, so
a dataset can skip and count it instead of crashing.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import av
import numpy as np
import torch

IMAGENET_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
IMAGENET_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
#: Shorter side before the center crop, relative to the crop: MMAction2's val pipelines resize to
#: 256 and crop 224 (``Resize(scale=(-1, 256))``, ``CenterCrop(crop_size=224)`` in e.g.
#: ``configs/recognition/tsm/tsm_imagenet-pretrained-r50_8xb16-1x1x8-50e_kinetics400-rgb.py``).
RESIZE_RATIO = 256 / 224


class BadVideo(Exception):
    """A file no clip can come from; ``reason`` is a short key for counting (e.g. ``truncated``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What a dataset needs to know about a video before sampling from it."""

    path: Path
    num_frames: int
    width: int
    height: int
    counted_by: str  # "container" (header count) or "decoding" (the header had none)


def default_short_side(image_size: tuple[int, int]) -> int:
    """The resize target for a crop of ``image_size``: 256 for 224, 73 for 64."""
    return round(max(image_size) * RESIZE_RATIO)


def _open(path: Path) -> av.container.InputContainer:
    if not path.exists():
        raise BadVideo("missing", "no such file")
    if path.stat().st_size == 0:
        raise BadVideo("empty", "zero-length file")
    try:
        return av.open(os.fspath(path))
    except av.FFmpegError as err:
        raise BadVideo("unreadable", f"not a video FFmpeg can open ({err.strerror})") from None


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first video stream, set to decode on one thread.

    FFmpeg's default (one slice thread per core) makes small frames 3-4x slower to decode
    (measured: 16 ms vs 4.5 ms for a 60-frame 96x96 H.264 video); parallelism belongs to the
    data loader's workers instead.
    """
    if not container.streams.video:
        kinds = ", ".join(s.type for s in container.streams) or "no streams"
        raise BadVideo("no-video-stream", f"the file holds no video stream ({kinds})")
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1
    return stream


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Open a video and count its frames: the container's count, or decoding when it has none."""
    path = Path(path)
    with _open(path) as container:
        stream = _video_stream(container)
        width, height = stream.codec_context.width, stream.codec_context.height
        if stream.frames > 0:
            return VideoInfo(path, stream.frames, width, height, "container")
        try:
            count = sum(1 for _ in container.decode(stream))
        except av.FFmpegError as err:
            raise BadVideo("truncated", f"decoding stopped with an error while counting frames ({err.strerror})") from None
    if count == 0:
        raise BadVideo("no-frames", "the video stream decodes to no frames")
    return VideoInfo(path, count, width, height, "decoding")


def _resized_size(width: int, height: int, short_side: int, crop: tuple[int, int]) -> tuple[int, int]:
    """(width, height) after scaling the shorter side to ``short_side``, never smaller than the crop."""
    scale = max(short_side / min(width, height), crop[0] / height, crop[1] / width)
    return max(crop[1], round(width * scale)), max(crop[0], round(height * scale))


def _resize_crop(frame: av.VideoFrame, short_side: int, image_size: tuple[int, int]) -> np.ndarray:
    """One decoded frame as the model sees it: shorter side to ``short_side``, center crop, uint8 RGB ``(H, W, 3)``."""
    crop_h, crop_w = image_size
    width, height = _resized_size(frame.width, frame.height, short_side, image_size)
    rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="BILINEAR").to_ndarray()
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return rgb[top:top + crop_h, left:left + crop_w]


def stream_frames(path: str | os.PathLike[str], image_size: tuple[int, int], short_side: int | None = None
                  ) -> Iterator[tuple[int, float, np.ndarray]]:
    """Every frame in decode order as ``(index, time in seconds, uint8 RGB (H, W, 3))``, one at a time.

    For streaming recognition: nothing but the current frame is held, so a long video or a live
    source never has to fit in memory. Raises :class:`BadVideo` for an unreadable or broken stream.
    """
    path = Path(path)
    short_side = default_short_side(image_size) if short_side is None else short_side
    with _open(path) as container:
        stream = _video_stream(container)
        index = -1
        try:
            for index, frame in enumerate(container.decode(stream)):
                seconds = float(frame.time) if frame.time is not None else index / float(stream.average_rate or 1)
                yield index, seconds, _resize_crop(frame, short_side, image_size)
        except av.FFmpegError as err:
            raise BadVideo("truncated", f"decoding failed after {index + 1} frames ({err.strerror})") from None
    if index < 0:
        raise BadVideo("no-frames", "the video stream decodes to no frames")


def read_frames(
    path: str | os.PathLike[str],
    indices: Sequence[int],
    image_size: tuple[int, int],
    short_side: int | None = None,
) -> np.ndarray:
    """Decode the frames at ``indices`` (any order, repeats allowed): ``(len(indices), H, W, 3)`` uint8 RGB.

    Frames are resized so the shorter side is ``short_side`` (default :func:`default_short_side`),
    then center-cropped to ``image_size`` (H, W). Raises :class:`BadVideo` ``truncated`` when the
    video ends or fails to decode before the last requested frame.
    """
    path = Path(path)
    short_side = default_short_side(image_size) if short_side is None else short_side
    wanted = {int(i) for i in indices}
    last = max(wanted)
    kept: dict[int, np.ndarray] = {}
    with _open(path) as container:
        stream = _video_stream(container)
        decoded = 0
        try:
            for index, frame in enumerate(container.decode(stream)):
                decoded = index + 1
                if index in wanted:
                    kept[index] = _resize_crop(frame, short_side, image_size)
                if index >= last:
                    break
        except av.FFmpegError as err:
            raise BadVideo("truncated", f"decoding failed after {decoded} frames, "
                                        f"frame {last} was needed ({err.strerror})") from None
    if last not in kept:
        raise BadVideo("truncated", f"the video ended after {decoded} frames, frame {last} was needed")
    return np.stack([kept[int(i)] for i in indices])


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 RGB ``(..., H, W, 3)`` -> float32 ``(..., 3, H, W)``, ImageNet-normalised."""
    normalised = (frames.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(normalised, -1, -3)))


def load_clips(
    path: str | os.PathLike[str],
    indices: np.ndarray,
    image_size: tuple[int, int],
    short_side: int | None = None,
) -> torch.Tensor:
    """Clips for model input: ``indices`` of shape ``(..., L)`` -> ``(..., L, 3, H, W)`` float32."""
    frames = read_frames(path, indices.reshape(-1), image_size, short_side)
    return to_tensor(frames.reshape(*indices.shape, *frames.shape[1:]))
