"""vidconv-stream VIDEO --bundle DIR: recognise actions as the frames arrive, the paper's sliding window.

The video is decoded as a stream (one frame held at a time) and preprocessed as evaluation does
(shorter side resized, center crop, ImageNet normalisation, from the bundle's model config). Each
new frame goes through the early graph once; every --stride frames, once L frames are buffered, the
later graph runs on the collage of the last L early outputs and a prediction is printed with its
time in the video and the frames per second processed so far. --json prints one JSON object per
window. Exit codes: 0 predictions were made; 2 bad input (an unreadable video, one shorter than a
window, a bundle without streaming graphs, a backend the bundle lacks) or a tool error.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from vidconv_deploy.cli.common import run_main
from vidconv_deploy.data.video import BadVideo, stream_frames, to_tensor
from vidconv_deploy.errors import UserError
from vidconv_deploy.models.zoo import shipped_class_names
from vidconv_deploy.stream import open_backend

PROG = "vidconv-stream"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video", type=Path, help="a video file PyAV (FFmpeg) can decode")
    parser.add_argument("--bundle", type=Path, required=True, help="a bundle vidconv-export wrote (--out/<arch>-<target>)")
    parser.add_argument("--backend", help="onnxruntime (float), or for DPU bundles onnxruntime-int8 or reference (the "
                                          "integer reference with DPU rounding, the default) or vart (on the board, with the compiled xmodels), "
                                          "brevitas (the default) or pytorch for FINN bundles")
    parser.add_argument("--stride", type=int, default=1, help="a prediction every K new frames (default 1)")
    parser.add_argument("--clips", type=int, default=1, help="average the scores of the last N windows (default 1)")
    parser.add_argument("--topk", type=int, default=5, help="classes shown per window (default 5)")
    parser.add_argument("--json", action="store_true", help="one JSON object per window on stdout")
    return parser.parse_args(argv)


def class_names(manifest: dict) -> list[str]:
    """The model card's class names when they fit the model (the shipped model's the bundle names, else its arch's),
    else class_<i>."""
    model = manifest["model"]
    n = model["config"]["num_classes"]
    name = (model.get("weights") or {}).get("shipped") or model["arch"]
    return shipped_class_names(name, n) or [f"class_{i}" for i in range(n)]


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    if args.topk < 1:
        raise UserError(f"--topk {args.topk}: give 1 or more")
    if not args.video.is_file():
        raise UserError(f"{args.video}: no such video file: give the path of a video")
    opened = open_backend(args.bundle, args.backend)
    backend, manifest = opened.name, opened.manifest
    recognizer = opened.recognizer(stride=args.stride, clips=args.clips)
    names = class_names(manifest)
    image_size = tuple(manifest["model"]["config"]["image_size"])
    console, err = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    err.print(f"{args.video.name}: {manifest['model']['arch']} on {backend}, window {recognizer.length} frames, "
              f"stride {args.stride}", highlight=False)
    start, frames, windows = time.perf_counter(), 0, 0
    try:
        for index, seconds, rgb in stream_frames(args.video, image_size):
            frames += 1
            prediction = recognizer.push(to_tensor(rgb).numpy())
            if prediction is None:
                continue
            windows += 1
            fps = frames / (time.perf_counter() - start)
            top = [(names[i], p) for i, p in prediction.topk(min(args.topk, len(names)))]
            if args.json:
                print(json.dumps({"frames": [prediction.first_frame, prediction.last_frame], "time_s": round(seconds, 3),
                                  "top": [[name, round(p, 4)] for name, p in top], "fps": round(fps, 2),
                                  "backend": backend}), flush=True)
            else:
                console.print(f"{seconds:8.2f}s  frames {prediction.first_frame}-{prediction.last_frame}  "
                              + "  ".join(f"{name} {p:.2f}" for name, p in top) + f"  ({fps:.1f} frames/s)", highlight=False)
    except BadVideo as bad:
        raise UserError(f"{args.video}: {bad.reason}: {bad.detail}: give a readable video") from None
    if windows == 0:
        raise UserError(f"{args.video} has {frames} frames, fewer than the {recognizer.length} one window needs: "
                        f"give a longer video")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, _main, argv)
