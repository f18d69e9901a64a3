"""Benchmark the DPU export: wall time and peak memory of each step, and the integer reference's speed.

    .venv/bin/python bench/dpu_pipeline.py [--arch vic-t-dpu] [--image-size 224] [--calib-clips 8]

Prints one JSON object on one line (the last); nothing is asserted. Goals (issue 14): the whole export <= 3x the time of
the calibration forward passes alone (ONNX Runtime fp32 as a runner runs it: every frame through the early
graph, every collage through the later graph, measured in the same run; also given against the same passes
with single-threaded sessions on the core pool, ORT's faster way here), peak RSS <= 4 GiB, and the integer
reference <= 1.5x ONNX Runtime fp32 on the same graphs: per feed (one run alone, the median of 7 taken in
turn with ONNX Runtime's) and as the export runs it (the feeds of a chunk at once on the core pool, against
ONNX Runtime on the same feeds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from vidconv_deploy import build_model
from vidconv_deploy.data.calibration import calibration_clips
from vidconv_deploy.onnx_session import ort_session
from vidconv_deploy.parallel import core_pool
from vidconv_deploy.reference.executor import Executor
from vidconv_deploy.runners import OnnxRuntimeRunner, StreamingSplit
from vidconv_deploy.targets.export import export_bundle
from vidconv_deploy.targets.registry import get_target


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples this process's RSS every 20 ms; :meth:`window` gives the peak inside a block."""

    def __init__(self) -> None:
        self.peak = 0
        self.stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.02)

    @contextlib.contextmanager
    def window(self, record: dict[str, Any]) -> Iterator[None]:
        self.peak = rss_bytes()
        yield
        record["peak_rss_mib"] = round(self.peak / 2**20, 1)


def seconds(fn, repeat: int, warmup: int = 0) -> float:
    """Mean seconds of ``repeat`` calls of ``fn`` after ``warmup`` untimed ones (an executor's first run
    builds its weight caches, a session's its buffers: one-time costs, not a feed's)."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def interleaved_medians(fns: dict[str, Any], repeat: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each of ``fns``, called in turn ``repeat`` times after ``warmup`` untimed rounds: a
    shared VM's slow spells (ONNX Runtime's one-feed time of the early graph ranged 36-64 ms within minutes,
    idle) then fall on both sides of a ratio alike, and the median drops a run they hit."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def pooled_forward(early: Any, later: Any, frames: list, collages: list) -> float:
    """The same forward passes with single-threaded sessions on the core pool (the feeds at once, as the
    export computes its float feeds): on small graphs faster than one run's intra-op threads."""
    with core_pool() as pool:
        start = time.perf_counter()
        for graph, feeds in ((early, frames), (later, collages)):
            runner = OnnxRuntimeRunner(graph, threads=pool.engine_threads)
            runner.load()
            pool.map(runner.run, feeds)
        return time.perf_counter() - start


def torch_search_positions(bundle_dir: Path, early: Any, later: Any, frames: list, collages: list) -> dict[str, bool]:
    """Per graph: do the export's fix positions (outputs, parameters, batch history) equal those of the same
    calibration with the torch diffs search, the code the vic-nano snapshot test pins?"""
    from vidconv_deploy.dpu.board_dir import io_fix_points
    from vidconv_deploy.quant import quantize_onnx

    def summary(info: dict[str, Any]) -> tuple[Any, ...]:
        return info["output"], info["param"], info["onnx"]["calibration"]["history"]

    with mock.patch.dict(os.environ, VIDCONV_NATIVE="0"):  # fixpoint/native.py's switch to the torch path
        early_q = quantize_onnx(early, frames)
        later_q = quantize_onnx(later, collages, fixed_fix_points={later.graph.input[0].name: io_fix_points(early_q.model)[1]})
    exported = {g: json.loads((bundle_dir / "quant" / f"{g}_quant_info.json").read_text()) for g in ("early", "later")}
    return {g: summary(exported[g]) == summary(json.loads(json.dumps(q.info)))
            for g, q in (("early", early_q), ("later", later_q))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="vic-t-dpu")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--calib-clips", type=int, default=8)
    parser.add_argument("--target", default="dpu-kv260")
    parser.add_argument("--verify-positions", action="store_true",
                        help="calibrate again with the torch diffs search instead of the compiled kernel and report whether "
                             "every fix position and the batch history equal the export's (about 2 s per clip more)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(args.arch, num_classes=10, image_size=args.image_size).eval()
    cfg = model.cfg
    rss = PeakRss()
    clips, source, _ = calibration_clips(None, cfg.frames, cfg.image_size, args.calib_clips)
    with tempfile.TemporaryDirectory() as tmp:
        options = argparse.Namespace(eval=None, calib=None, calib_clips=len(clips))
        values = {"calibration": {"clips": clips, "source": source}, "class_names": [f"c{i}" for i in range(10)]}
        start = time.perf_counter()
        outcome = export_bundle(get_target(args.target), model, {"source": "random"}, options, Path(tmp), values,
                                observer=rss.window)
        total = time.perf_counter() - start
        export_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this process's peak so far
        import onnx

        bundle_dir = outcome.directory
        bundle = outcome.context.bundle
        early, later = (onnx.load(str(bundle_dir / f"{g}.onnx")) for g in ("early", "later"))
        q_early, q_later = (onnx.load(str(bundle_dir / "quant" / f"{g}.onnx")) for g in ("early", "later"))
        split = StreamingSplit(cfg.grid, OnnxRuntimeRunner(early), OnnxRuntimeRunner(later))
        calib_start = time.perf_counter()
        frames, collages = split.feeds(clips)
        floor_early = time.perf_counter() - calib_start
        for feed in collages:
            split.later.run(feed)
        calib_forward = time.perf_counter() - calib_start
        pooled_floor = pooled_forward(early, later, frames, collages)
        positions = torch_search_positions(bundle_dir, early, later, frames, collages) if args.verify_positions else None
        speed = {}
        for name, fp32, quant, feeds in (("early", early, q_early, frames[:8]), ("later", later, q_later, collages[:4])):
            session, executor = ort_session(fp32), Executor(quant)
            one = interleaved_medians({"ort": lambda: session.run(None, feeds[0]),
                                       "ref": lambda: executor.run(feeds[0], "dpu")}, repeat=7)
            ort_s, ref_s = one["ort"], one["ref"]
            ort_all = seconds(lambda: [session.run(None, f) for f in feeds], 1)
            with core_pool() as pool:
                ref_all = seconds(lambda: pool.map(lambda f: executor.run(f, "dpu"), feeds), 1)
            speed[name] = {"onnxruntime_fp32_s": round(ort_s, 4), "integer_reference_s": round(ref_s, 4),
                           "ratio": round(ref_s / ort_s, 2), "feeds": len(feeds),
                           "pooled_ratio": round(ref_all / ort_all, 2)}
    print(json.dumps({
        "arch": cfg.arch, "image_size": list(cfg.image_size), "target": args.target, "calibration_clips": len(clips),
        "torch_threads": torch.get_num_threads(),
        "export_total_s": round(total, 2),
        "calibration_forward_s": round(calib_forward, 2),
        "calibration_forward_parts_s": {"early": round(floor_early, 2), "later": round(calib_forward - floor_early, 2)},
        "calibration_forward_pooled_s": round(pooled_floor, 2),
        "export_over_pooled_forward": round(total / pooled_floor, 2),
        "export_over_calibration_forward": round(total / calib_forward, 2), "goal_export_over_calibration": 3,
        "steps": [{k: v for k, v in s.items() if k in ("name", "status", "seconds", "peak_rss_mib")} for s in bundle.steps],
        "integer_reference_vs_onnxruntime_fp32": speed, "goal_reference_ratio": 1.5,
        "bit_exact": {g: r["bit_exact_vs_onnxruntime"] for g, r in outcome.context.fields["reference"].items()},
        **({"positions_equal_torch_search": positions} if positions is not None else {}),
        "export_peak_rss_mib": round(export_peak, 1), "goal_peak_rss_mib": 4096,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


if __name__ == "__main__":
    main()
