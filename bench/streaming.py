"""Benchmark streaming recognition: seconds per new frame on the sliding window against a whole clip.

    .venv/bin/python bench/streaming.py --arch A [--image-size S] [--target onnx|dpu-kv260] [--calib-clips N]
                                        [--frames-to-stream N] [--runs 5] [--json]

Exports a randomly initialised ``A`` to a temporary folder (a faithful arch to ``--target onnx``,
a ``-dpu`` arch to a DPU target, default ``dpu-kv260``), then, on each backend the bundle streams on
(``vidconv_deploy.stream.open_backend``: ``onnxruntime`` (fp32) for every bundle; DPU bundles add
``onnxruntime-int8`` (the INT8 QDQ graphs) and ``reference`` (the integer reference, DPU rounding);
``vart``, the board's DPU, is not timed here):

- ``full_clip_s``: one clip (the stream's first L frames) through the streaming split,
  ``split.run_clip(clip)`` (L early runs, the host collage, one later run); on ``onnxruntime`` also
  the whole-clip graph ``deploy.onnx`` (``whole_clip_graph_s``). One warm-up, median of ``--runs``.
- ``per_new_frame_s``: ``--frames-to-stream`` frames (default 3 x L) pushed through the backend's
  ``StreamingRecognizer`` (``Backend.recognizer``: its own ring buffer, int8 codes on the integer
  paths) at stride 1; only the pushes after the first L are timed (each is one early run and one
  later run, a window per frame), median per frame.
- ``early_frame_s``, ``later_window_s``: one early run (one frame) and one later run (one collage)
  alone, one warm-up, median of ``--runs``: a full clip through the split is L of the first and one
  of the second, a push one of each, so per-call overheads show here.
- The ``--runs`` full-clip and part runs are interleaved with the timed pushes (spread evenly
  between them), so that on a shared machine both sides of each ratio see the same load.
- ``speedup`` = ``full_clip_s`` / ``per_new_frame_s``; ``theoretical_speedup`` = the clip's MACs over
  the MACs of one new frame, from ``vidconv_deploy.models.complexity.measure``: its stem, stage1 and
  stage2 parts are the early net over all L frames of the clip, so a new frame costs early / L + later.
  MACs leave out the elementwise work (normalisation, activations), which is larger per MAC in the
  early stages (more pixels, fewer channels); the measured ratio can exceed the MAC ratio.
- ``max_rel_diff``: the largest ``relative_error`` (max abs diff / max abs) between a streamed
  window's logits and the full clip's on the same L frames: on ``onnxruntime`` against the whole-clip
  graph (1e-5 is the library's tolerance), on the integer backends against ``split.run_clip`` (0 expected).
- ``speedup_of_minima`` (fastest full clip / fastest push: what the split allows when nothing gets
  in the way) and ``early_time_share`` ((``full_clip_s`` - ``later_window_s``) / ``full_clip_s``: the
  early net's share of a full clip's time, against ``macs.early_mac_share``; where the early net
  takes a larger share of the time than of the MACs, the measured speedup exceeds the MAC ratio).

The goal (issue 13): ``speedup`` on ONNX Runtime fp32 >= 0.95 x ``theoretical_speedup``
(``goal_met``). Every ONNX Runtime session is the library's (``ort_session``: CPU provider, graph
optimisations off, default threads). Progress goes to stderr; the last line of stdout is one JSON
object (``--json``: nothing else; otherwise a table on stderr first). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from machine import environment, load_average  # bench/machine.py: this folder is on sys.path when run as a script

from vidconv_deploy import build_model
from vidconv_deploy.bundle import read_manifest
from vidconv_deploy.data.synthetic import render
from vidconv_deploy.data.video import to_tensor
from vidconv_deploy.export.onnx_export import relative_error
from vidconv_deploy.models.complexity import measure
from vidconv_deploy.models.config import ViCConfig, split_arch
from vidconv_deploy.runners import OnnxRuntimeRunner
from vidconv_deploy.stream import backends_of, open_backend
from vidconv_deploy.targets.export import export_bundle
from vidconv_deploy.targets.registry import get_target

#: The goal of issue 13: the measured speedup on ONNX Runtime fp32 reaches this fraction of the MAC ratio.
GOAL_FRACTION = 0.95
#: The backends timed here (a DPU bundle's "vart" runs on the board, not on this host).
HOST_BACKENDS = ("onnxruntime", "onnxruntime-int8", "reference")
#: Seed of the streamed synthetic video (not the calibration set's 1000, nor the training set's 0).
STREAM_SEED = 2000


def log(message: str) -> None:
    print(f"[streaming] {message}", file=sys.stderr, flush=True)


def stream_video(cfg: ViCConfig, count: int) -> np.ndarray:
    """``count`` preprocessed frames ``(count, 3, H, W)`` of one synthetic-motion video (centre crop to the input size)."""
    h, w = cfg.image_size
    rgb = render(0, count, max(h, w), np.random.default_rng(STREAM_SEED))
    top, left = (rgb.shape[1] - h) // 2, (rgb.shape[2] - w) // 2
    return np.ascontiguousarray(to_tensor(rgb[:, top:top + h, left:left + w]).numpy(), dtype=np.float32)


def theoretical(cfg: ViCConfig) -> dict[str, Any]:
    """MACs of a whole clip and of one new frame when streaming (``measure`` counts the early parts over all L frames)."""
    parts = {p.name: p.macs for p in measure(cfg)}
    early_clip = parts["stem"] + parts["stage1"] + parts["stage2"]
    clip = sum(parts.values())
    later = clip - early_clip
    per_frame = early_clip / cfg.frames + later
    return {"clip_macs": clip, "early_macs_per_frame": early_clip // cfg.frames, "later_macs": later,
            "early_mac_share": round(early_clip / clip, 4),
            "new_frame_macs": int(per_frame), "theoretical_speedup": clip / per_frame}


def seconds(fn: Callable[[], Any]) -> float:
    """The wall time of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", required=True, help="e.g. vic-nano, vic-t (--target onnx) or vic-nano-dpu (a DPU target)")
    parser.add_argument("--image-size", type=int, help="default: the arch's own")
    parser.add_argument("--target", help="onnx for a faithful arch (the default), a DPU target for a -dpu arch "
                                         "(default dpu-kv260)")
    parser.add_argument("--calib-clips", type=int, default=8, help="calibration clips of a DPU export (default 8)")
    parser.add_argument("--frames-to-stream", type=int, help="frames pushed through the recognizer (default 3 x L)")
    parser.add_argument("--runs", type=int, default=5, help="timed whole-clip runs per backend after one warm-up (default 5)")
    parser.add_argument("--json", action="store_true", help="print only the JSON (no table)")
    args = parser.parse_args()
    hardware = bool(split_arch(args.arch)[1])
    target = get_target(args.target or ("dpu-kv260" if hardware else "onnx"))
    if target.family not in ("onnx", "dpu"):
        parser.error(f"--target {target.name} is a {target.family} target: streaming runs on onnx and dpu-* bundles")
    if target.family == "dpu" and not hardware:
        parser.error(f"--arch {args.arch} is a faithful arch: the DPU targets deploy e.g. {args.arch}-dpu "
                     f"(or give --target onnx)")
    if target.family == "onnx" and hardware:
        parser.error(f"--arch {args.arch} is a hardware variant: give a DPU target (e.g. --target dpu-kv260) "
                     f"or the faithful arch {split_arch(args.arch)[0]} with --target onnx")
    if args.runs < 1 or args.calib_clips < 1:
        parser.error("--runs and --calib-clips must be >= 1")

    load_before = load_average()
    torch.manual_seed(0)
    model = build_model(args.arch, num_classes=10, image_size=args.image_size).eval()
    cfg = model.cfg
    length = cfg.frames
    count = args.frames_to_stream or 3 * length
    if count <= length:
        parser.error(f"--frames-to-stream {count}: give more than the window's {length} frames (the pushes after "
                     f"the first {length} are timed)")
    log(f"{cfg.arch} at {cfg.image_size[0]}x{cfg.image_size[1]}, grid {cfg.grid[0]}x{cfg.grid[1]} (L = {length}), "
        f"target {target.name}, {count} frames streamed")
    frames = stream_video(cfg, count)
    clip = frames[:length]
    macs = theoretical(cfg)
    per_backend: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="vidconv-streaming-") as tmp:
        options = argparse.Namespace(eval=None, calib=None, calib_clips=args.calib_clips)
        values: dict[str, Any] = {"class_names": [f"c{i}" for i in range(10)]}
        if target.family == "dpu":
            from vidconv_deploy.data.calibration import calibration_clips

            clips, source, _ = calibration_clips(None, length, cfg.image_size, args.calib_clips)
            values["calibration"] = {"clips": clips, "source": source}
        log(f"exporting to {target.name} (a temporary folder) ...")
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON
            outcome = export_bundle(target, model, {"source": "random"}, options, Path(tmp), values)
        export_s = time.perf_counter() - start
        log(f"export done in {export_s:.1f} s (verdict: {outcome.verdict.summary()})")
        bundle = outcome.directory
        whole = OnnxRuntimeRunner(onnx.load(str(bundle / "deploy.onnx")), "deploy.onnx")
        whole_in, whole_out = whole.input_names[0], whole.output_names[0]
        available = backends_of(read_manifest(bundle))
        skipped = {b: "not a host backend (the board's DPU through VART)" for b in available if b not in HOST_BACKENDS}
        # fp32 first: it is the headline figure, and its whole-clip graph is the float reference.
        for backend in sorted((b for b in available if b in HOST_BACKENDS), key=lambda b: b != "onnxruntime"):
            opened = open_backend(bundle, backend)
            name, split = opened.name, opened.split
            record: dict[str, Any] = {}
            collage = split.run_clip(clip).collage
            # Timed against the stream: the full clip through the split; on fp32 also the whole-clip graph; and the
            # two parts alone (what a push and a full clip are made of: one early run, one later run).
            others: dict[str, Callable[[], Any]] = {"full_clip": lambda: split.run_clip(clip)}
            if name == "onnxruntime":
                others["whole_clip_graph"] = lambda: whole.run({whole_in: clip[None]})[whole_out]
            others.update(early_frame=lambda: split.run_frame(clip[0]), later_window=lambda: split.run_later(collage))
            for fn in others.values():  # the warm-up
                fn()
            timed_pushes = count - length
            schedule = collections.Counter(i * timed_pushes // args.runs for i in range(args.runs))
            log(f"{name}: streaming {count} frames at stride 1 (pushes after the first {length} timed), "
                f"{args.runs} runs of {', '.join(others)} interleaved ...")
            recognizer = opened.recognizer(stride=1)  # the backend's own ring buffer (int8 codes on the integer paths)
            pushes: list[float] = []
            windows = []
            others_s: dict[str, list[float]] = {k: [] for k in others}
            for index, frame in enumerate(frames):
                for _ in range(schedule[index - length] if index >= length else 0):
                    for key, fn in others.items():
                        others_s[key].append(seconds(fn))
                start = time.perf_counter()
                prediction = recognizer.push(frame)
                elapsed = time.perf_counter() - start
                if index >= length:
                    pushes.append(elapsed)
                if prediction is not None:
                    windows.append(prediction)
            per_frame = statistics.median(pushes)
            full = statistics.median(others_s["full_clip"])
            early_s, later_s = statistics.median(others_s["early_frame"]), statistics.median(others_s["later_window"])
            record.update(full_clip_s=full, full_clip_runs_s=[round(t, 5) for t in others_s["full_clip"]])
            if name == "onnxruntime":
                record.update(whole_clip_graph_s=statistics.median(others_s["whole_clip_graph"]),
                              whole_clip_graph_runs_s=[round(t, 5) for t in others_s["whole_clip_graph"]])
            record.update(early_frame_s=early_s, later_window_s=later_s, per_new_frame_s=per_frame,
                          timed_pushes=len(pushes), per_new_frame_min_s=min(pushes), per_new_frame_max_s=max(pushes))
            log(f"{name}: comparing {len(windows)} windows with the full clip on the same frames ...")
            diffs = []
            for p in windows:
                window = frames[p.first_frame:p.last_frame + 1]
                expected = (whole.run({whole_in: window[None]})[whole_out] if name == "onnxruntime"
                            else split.run_clip(window).logits)[0]
                diffs.append(relative_error(p.logits, expected))
            record.update(max_rel_diff=max(diffs), compared_with=("the whole-clip graph deploy.onnx" if name == "onnxruntime"
                                                                  else "split.run_clip on the same backend"),
                          windows=len(windows), speedup=full / per_frame, speedup_of_minima=min(others_s["full_clip"]) / min(pushes),
                          early_time_share=(full - later_s) / full)
            if name == "onnxruntime":
                record["speedup_vs_whole_clip_graph"] = record["whole_clip_graph_s"] / per_frame
            log(f"{name}: full clip {full:.4f} s, per new frame {per_frame:.4f} s, speedup {full / per_frame:.2f}x "
                f"(theoretical {macs['theoretical_speedup']:.2f}x), max rel diff {max(diffs):.2e}")
            per_backend[name] = record
        verdict = {"holds": outcome.verdict.holds, "failed": outcome.verdict.failed}

    fp32 = per_backend["onnxruntime"]
    ratio = fp32["speedup"] / macs["theoretical_speedup"]
    report = {
        "arch": cfg.arch, "image_size": list(cfg.image_size), "grid": list(cfg.grid), "frames": length,
        "target": target.name, "frames_streamed": count, "stride": 1, "runs": args.runs, "warmup_runs": 1,
        "speedup": round(fp32["speedup"], 3), "theoretical_speedup": round(macs["theoretical_speedup"], 3),
        "ratio_to_theoretical": round(ratio, 3), "goal": f"speedup >= {GOAL_FRACTION} x theoretical on onnxruntime fp32",
        "goal_met": bool(ratio >= GOAL_FRACTION), "max_rel_diff": fp32["max_rel_diff"],
        "backends_skipped": skipped,
        "per_backend": {name: {k: (round(v, 5) if isinstance(v, float) and k != "max_rel_diff" else v) for k, v in r.items()}
                        for name, r in per_backend.items()},
        "macs": {k: v for k, v in macs.items() if k != "theoretical_speedup"},
        "export_s": round(export_s, 2), "export_verdict": verdict,
        "stream": f"synthetic-motion video (vidconv_deploy.data.synthetic.render, seed {STREAM_SEED}), ImageNet-normalised",
        **environment(load_before),
    }
    if not args.json:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{cfg.arch} {cfg.image_size[0]}x{cfg.image_size[1]}, L = {length}: streaming vs full clip "
                            f"(theoretical {macs['theoretical_speedup']:.2f}x)")
        for column in ("backend", "full clip s", "per new frame s", "speedup", "x theoretical", "max rel diff"):
            table.add_column(column, justify="left" if column == "backend" else "right")
        for name, r in per_backend.items():
            table.add_row(name, f"{r['full_clip_s']:.4f}", f"{r['per_new_frame_s']:.4f}", f"{r['speedup']:.2f}",
                          f"{r['speedup'] / macs['theoretical_speedup']:.2f}", f"{r['max_rel_diff']:.1e}")
        Console(stderr=True).print(table)
        log(f"goal (onnxruntime fp32 speedup >= {GOAL_FRACTION} x theoretical): "
            f"{'met' if report['goal_met'] else 'not met'} ({ratio:.2f})")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
