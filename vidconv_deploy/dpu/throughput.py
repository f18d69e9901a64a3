"""The DPU's peak-throughput bound for a VidConv: what the board's parallelism and clock allow at best."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vidconv_deploy.models.complexity import measure
from vidconv_deploy.models.config import ViCConfig


def peak_throughput(rules: Mapping[str, Any], cfg: ViCConfig) -> dict[str, Any]:
    """The board's peak DPU ops/s and the clip rate it bounds (MACs counted on the model, 2 ops each).

    A bound, not a measurement: real DPUs reach a fraction of peak (memory, depthwise at half
    pixel parallelism, small channel counts). ``rules``: the board's resolved rule-set data.
    """
    board, conv = rules.get("board", {}), rules["engines"]["conv"]
    ops_per_clock = 2 * conv["pixel_parallel"] * rules["channel_parallel"] * conv["output_channel_parallel"]
    cores = board.get("cores", 1) * board.get("batch", 1)
    peak = ops_per_clock * cores * board["clock_mhz"] * 1e6
    parts = {p.name: p.macs for p in measure(cfg)}  # per clip: the early parts count all L frames
    early_macs = parts["stem"] + parts["stage1"] + parts["stage2"]
    later_macs = sum(parts.values()) - early_macs
    per_new_frame = early_macs / cfg.frames + later_macs  # streaming: one frame through the early net, one collage
    return {"peak_ops_per_s": peak, "ops_per_clock_per_core": ops_per_clock, "cores": cores, "clock_mhz": board["clock_mhz"],
            "ops_per_clip": 2 * (early_macs + later_macs),
            "clips_per_s_bound": peak / (2 * (early_macs + later_macs)),
            "ops_per_streamed_frame": 2 * per_new_frame,
            "streamed_frames_per_s_bound": peak / (2 * per_new_frame),
            "note": "peak-throughput bound 2 x PP x ICP x OCP x cores x clock (the DPUCZDX8G formula, PG338; for the "
                    "AIE-based DPUCVDX8G/DPUCV2DX8G it is an estimate from the same parallelism, not a datasheet figure); "
                    "the early net runs once per new frame when streaming"}
