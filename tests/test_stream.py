"""Streaming recognition (issue 13, first slice): the sliding window over a bundle equals the full-clip model
on the same L frames, on every backend a DPU bundle has; vidconv-stream on a real video; its bad input."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from vidconv_deploy.cli.export import main as export_main
from vidconv_deploy.cli.stream import main as stream_main
from vidconv_deploy.export.onnx_export import relative_error
from vidconv_deploy.runners import OnnxRuntimeRunner
from vidconv_deploy.stream import Int8Buffer, open_backend

FRAMES = 15  # 9-frame windows at stride 3: windows end at frames 8, 11 and 14


def frames(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((FRAMES, 3, 32, 32)).astype(np.float32)


def stream(backend, clip: np.ndarray, stride: int = 3, clips: int = 1) -> list:
    recognizer = backend.recognizer(stride=stride, clips=clips)
    return [p for p in (recognizer.push(frame) for frame in clip) if p is not None]


def test_float_windows_equal_the_whole_clip_graph(dpu_bundle):
    clip = frames()
    predictions = stream(open_backend(dpu_bundle, "onnxruntime"), clip)
    assert [(p.first_frame, p.last_frame) for p in predictions] == [(0, 8), (3, 11), (6, 14)]
    whole = OnnxRuntimeRunner(dpu_bundle / "deploy.onnx")
    for p in predictions:
        expected = whole.run({"clip": clip[None, p.first_frame:p.last_frame + 1]})["logits"][0]
        assert relative_error(p.logits, expected) <= 1e-5


@pytest.mark.parametrize("backend", ["reference", "onnxruntime-int8"])
def test_integer_windows_equal_the_full_clip_bit_for_bit(dpu_bundle, backend):
    """The ring buffer (int8 codes, channels-last, as on the board) and the collage order: each window's logits are
    exactly those of the clip run whole."""
    opened, fresh = open_backend(dpu_bundle, backend), open_backend(dpu_bundle, backend).split
    assert isinstance(opened.buffer, Int8Buffer)
    clip = frames(1)
    recognizer = opened.recognizer(stride=3)
    predictions = [p for p in (recognizer.push(frame) for frame in clip) if p is not None]
    assert len(predictions) == 3 and all(b.dtype == np.int8 and b.shape[-1] > b.shape[1] for b in recognizer.buffer)
    for p in predictions:
        assert np.array_equal(p.logits, fresh.run_clip(clip[p.first_frame:p.last_frame + 1]).logits[0]), (backend, p)


def test_scores_average_the_last_windows(dpu_bundle):
    predictions = stream(open_backend(dpu_bundle), frames(2), stride=3, clips=2)  # default: the integer reference
    assert np.array_equal(predictions[0].score, predictions[0].logits)
    assert np.allclose(predictions[2].score, (predictions[1].logits + predictions[2].logits) / 2)
    assert predictions[2].topk(3)[0][0] == int(np.argmax(predictions[2].score))


def test_vidconv_stream_prints_a_json_line_per_window(dpu_bundle, tiny_dataset, capsys):
    video = sorted((tiny_dataset).rglob("*.mp4"))[0]
    with av.open(str(video)) as container:
        count = sum(1 for _ in container.decode(video=0))
    assert stream_main([str(video), "--bundle", str(dpu_bundle), "--stride", "4", "--topk", "2", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == len(range(8, count, 4)) and lines[0]["frames"] == [0, 8] and lines[1]["frames"] == [4, 12]
    assert all(len(line["top"]) == 2 and line["backend"] == "reference" and line["fps"] > 0 for line in lines)


def short_video(path: Path, frames: int) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 32
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_bad_input_is_one_line(dpu_bundle, tmp_path, tiny_dataset, capsys):
    video = sorted((tiny_dataset).rglob("*.mp4"))[0]
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 100)
    assert export_main(["--arch", "vic-nano", "--classes", "10", "--image-size", "32", "--out", str(tmp_path),
                        "--stop-after", "export_deploy"]) == 0
    cases = [
        ([str(short_video(tmp_path / "short.mp4", 5)), "--bundle", str(dpu_bundle)], "has 5 frames, fewer than the 9"),
        ([str(garbage), "--bundle", str(dpu_bundle)], "garbage.mp4: unreadable"),
        ([str(video), "--bundle", str(tmp_path / "vic-nano-onnx")], "has no early_onnx"),
        ([str(video), "--bundle", str(dpu_bundle), "--backend", "brevitas"], "backend 'brevitas' is not one this"),
        ([str(video), "--bundle", str(dpu_bundle), "--backend", "vart"], "holds no compiled xmodels"),
        ([str(video), "--bundle", str(tmp_path)], "holds no readable manifest.json"),
        ([str(video), "--bundle", str(dpu_bundle), "--stride", "0"], "stride 0"),
    ]
    capsys.readouterr()
    for argv, message in cases:
        assert stream_main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("vidconv-stream: error: ") and message in err[-1], err
        assert not any("Traceback" in line for line in err)
