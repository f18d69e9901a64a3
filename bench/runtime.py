"""Benchmark one clip's runtime on every host engine: PyTorch, ONNX Runtime fp32 and INT8 QDQ, the integer reference.

    .venv/bin/python bench/runtime.py --arch A [--image-size S] [--target dpu-kv260] [--calib-clips N] [--runs 5] [--json]

Exports a randomly initialised ``A`` (a ``-dpu`` variant: the DPU targets deploy those) to a
temporary folder, then times the same clip (the first calibration clip) through:

- ``pytorch_eager``: the model, eval, under ``torch.no_grad``;
- ``onnxruntime_fp32_whole_clip``: ``deploy.onnx``, the whole clip in one graph;
- ``onnxruntime_fp32_streaming``: ``early.onnx`` per frame, the host collage, ``later.onnx``;
- ``onnxruntime_int8_qdq_streaming``: the same split on ``quant/early.onnx`` and ``quant/later.onnx``;
- ``integer_reference_dpu_streaming``: the same quantized split on the integer reference with DPU rounding.

Every ONNX Runtime session is the library's (``vidconv_deploy.onnx_session.ort_session``: CPU provider,
graph optimisations off, so the QDQ graph runs as fake-quant float ops, not ORT's integer kernels).
Each engine gets one warm-up run, then the median of ``--runs`` runs (seconds per clip). Progress goes
to stderr; the last line of stdout is one JSON object (``--json``: nothing else; otherwise a table on
stderr first). Nothing is asserted.
"""

from __future__ import annotations

import argparse
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
from vidconv_deploy.data.calibration import calibration_clips
from vidconv_deploy.models.config import split_arch
from vidconv_deploy.runners import IntegerReferenceRunner, OnnxRuntimeRunner, StreamingSplit
from vidconv_deploy.targets.export import export_bundle
from vidconv_deploy.targets.registry import get_target

#: The engines, in the order they are timed and reported.
ENGINES = ("pytorch_eager", "onnxruntime_fp32_whole_clip", "onnxruntime_fp32_streaming",
           "onnxruntime_int8_qdq_streaming", "integer_reference_dpu_streaming")


def log(message: str) -> None:
    print(f"[runtime] {message}", file=sys.stderr, flush=True)


def time_runs(fn: Callable[[], np.ndarray], runs: int) -> tuple[list[float], np.ndarray]:
    """One warm-up call, then ``runs`` timed calls: the seconds of each and the warm-up's output."""
    out = fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", required=True, help="a -dpu variant, e.g. vic-nano-dpu or vic-t-dpu")
    parser.add_argument("--image-size", type=int, help="default: the arch's own")
    parser.add_argument("--target", default="dpu-kv260", help="a DPU target (default dpu-kv260)")
    parser.add_argument("--calib-clips", type=int, default=8, help="calibration clips of the export (default 8)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per engine after one warm-up (default 5)")
    parser.add_argument("--json", action="store_true", help="print only the JSON (no table)")
    args = parser.parse_args()
    target = get_target(args.target)
    if target.family != "dpu":
        parser.error(f"--target {args.target} is a {target.family} target: the INT8 QDQ graphs and the integer "
                     f"reference come from a DPU target (e.g. dpu-kv260)")
    if not split_arch(args.arch)[1]:
        parser.error(f"--arch {args.arch} is not a hardware variant: the DPU targets deploy e.g. {args.arch}-dpu")
    if args.runs < 1 or args.calib_clips < 1:
        parser.error("--runs and --calib-clips must be >= 1")

    load_before = load_average()
    torch.manual_seed(0)
    model = build_model(args.arch, num_classes=10, image_size=args.image_size).eval()
    cfg = model.cfg
    log(f"{cfg.arch} at {cfg.image_size[0]}x{cfg.image_size[1]}, grid {cfg.grid[0]}x{cfg.grid[1]}: "
        f"{args.calib_clips} calibration clips")
    clips, source, _ = calibration_clips(None, cfg.frames, cfg.image_size, args.calib_clips)
    clip = np.ascontiguousarray(clips[0], dtype=np.float32)  # (L, 3, H, W): the one clip every engine runs
    results: dict[str, dict[str, Any]] = {}
    outputs: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="vidconv-runtime-") as tmp:
        options = argparse.Namespace(eval=None, calib=None, calib_clips=len(clips))
        values = {"calibration": {"clips": clips, "source": source}, "class_names": [f"c{i}" for i in range(10)]}
        log(f"exporting to {args.target} (a temporary folder) ...")
        start = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the JSON
            outcome = export_bundle(target, model, {"source": "random"}, options, Path(tmp), values)
        export_s = time.perf_counter() - start
        log(f"export done in {export_s:.1f} s (verdict: {outcome.verdict.summary()})")
        bundle = outcome.directory
        missing = [p for p in ("deploy.onnx", "early.onnx", "later.onnx", "quant/early.onnx", "quant/later.onnx")
                   if not (bundle / p).is_file()]
        if missing:
            sys.exit(f"runtime.py: the bundle lacks {', '.join(missing)} (export verdict: {outcome.verdict.summary()})")

        whole = OnnxRuntimeRunner(onnx.load(str(bundle / "deploy.onnx")), "deploy.onnx")
        fp32 = StreamingSplit(cfg.grid, OnnxRuntimeRunner(onnx.load(str(bundle / "early.onnx"))),
                              OnnxRuntimeRunner(onnx.load(str(bundle / "later.onnx"))))
        q_early, q_later = (onnx.load(str(bundle / "quant" / f"{g}.onnx")) for g in ("early", "later"))
        qdq = StreamingSplit(cfg.grid, OnnxRuntimeRunner(q_early), OnnxRuntimeRunner(q_later))
        reference = StreamingSplit(cfg.grid, IntegerReferenceRunner(q_early, "dpu"), IntegerReferenceRunner(q_later, "dpu"))
        batch = clip[None]  # (1, L, 3, H, W)
        whole_in, whole_out = whole.input_names[0], whole.output_names[0]
        torch_clip = torch.from_numpy(batch)

        def eager() -> np.ndarray:
            with torch.no_grad():
                return model(torch_clip).numpy()

        engines: dict[str, Callable[[], np.ndarray]] = {
            "pytorch_eager": eager,
            "onnxruntime_fp32_whole_clip": lambda: whole.run({whole_in: batch})[whole_out],
            "onnxruntime_fp32_streaming": lambda: fp32.run_clip(clip).logits,
            "onnxruntime_int8_qdq_streaming": lambda: qdq.run_clip(clip).logits,
            "integer_reference_dpu_streaming": lambda: reference.run_clip(clip).logits,
        }
        for name in ENGINES:
            log(f"{name}: 1 warm-up + {args.runs} runs ...")
            times, outputs[name] = time_runs(engines[name], args.runs)
            results[name] = {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
                             "runs_s": [round(t, 4) for t in times]}
            log(f"{name}: median {results[name]['median_s']:.4f} s per clip")
        verdict = {"holds": outcome.verdict.holds, "failed": outcome.verdict.failed}

    med = {name: results[name]["median_s"] for name in ENGINES}

    def ratio(a: str, b: str) -> float:
        return round(med[a] / med[b], 2)

    ratios = {f"{name}_vs_onnxruntime_fp32_whole_clip": ratio(name, "onnxruntime_fp32_whole_clip")
              for name in ENGINES if name != "onnxruntime_fp32_whole_clip"}
    ratios["integer_reference_dpu_vs_onnxruntime_fp32_streaming"] = ratio("integer_reference_dpu_streaming",
                                                                          "onnxruntime_fp32_streaming")
    ratios["onnxruntime_int8_qdq_vs_fp32_streaming"] = ratio("onnxruntime_int8_qdq_streaming", "onnxruntime_fp32_streaming")
    torch_logits = outputs["pytorch_eager"]
    agreement = {name: float(np.max(np.abs(outputs[name] - torch_logits))) for name in ENGINES if name != "pytorch_eager"}
    report = {
        "arch": cfg.arch, "image_size": list(cfg.image_size), "grid": list(cfg.grid), "frames": cfg.frames,
        "target": args.target, "clip": f"first of {source}", "calibration_clips": len(clips),
        "export_s": round(export_s, 2), "export_verdict": verdict,
        "runs": args.runs, "warmup_runs": 1,
        "seconds_per_clip": med, "timings": results, "ratios": ratios,
        "logits_max_abs_diff_vs_pytorch": agreement, "pytorch_logits_max_abs": float(np.max(np.abs(torch_logits))),
        **environment(load_before),
    }
    if not args.json:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{cfg.arch} {cfg.image_size[0]}x{cfg.image_size[1]}: seconds per clip "
                            f"(median of {args.runs}, {torch.get_num_threads()} torch threads)")
        table.add_column("engine")
        table.add_column("s / clip", justify="right")
        table.add_column("x ORT fp32 whole clip", justify="right")
        for name in ENGINES:
            table.add_row(name, f"{med[name]:.4f}", f"{ratio(name, 'onnxruntime_fp32_whole_clip'):.2f}")
        Console(stderr=True).print(table)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
