"""The pieces of the FINN export the steps (:mod:`vidconv_deploy.targets.finn_steps`) put together: the
calibrated FINN model, its QONNX export per graph, and the ``finn build`` configs and scripts for a
machine with Vivado (without it no bitfile is built and the manifest says so).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidconv_deploy.atomic import write_text
from vidconv_deploy.bundle import Bundle
from vidconv_deploy.errors import UserError
from vidconv_deploy.finn.boards import Board
from vidconv_deploy.finn.model import FinnViC, GraphPart, calibrate, from_float
from vidconv_deploy.models.vidconv import VidConv
from vidconv_deploy.runners import GRAPHS

#: Random calibration clips when none are given (the manifest says so).
RANDOM_CALIB_CLIPS = 2
BUILD_DIR = "finn_build"
#: The image docker/finn builds.
IMAGE = "vidconv-deploy/finn:1.6.1"
#: The builder's default steps after those our flow ran (finn/builder/build_dataflow_config.py
#: default_build_dataflow_steps from step_apply_folding_config on); each step checks generate_outputs.
BUILD_STEPS = ["step_apply_folding_config", "step_minimize_bit_width", "step_transpose_decomposition",
               "step_generate_estimate_reports", "step_assign_ddr_weight_offsets", "step_generate_hardware",
               "step_create_stitched_ip", "step_measure_rtlsim_performance", "step_out_of_context_synthesis",
               "step_prepare_synthesis", "step_synthesize_bitfile", "step_make_driver", "step_deployment_package"]


def _clip_batch(clip: torch.Tensor) -> torch.Tensor:
    return clip.unsqueeze(0) if clip.ndim == 4 else clip


def prepare_model(model: nn.Module, bits: str, calib_clips: list[torch.Tensor] | None,
                  seed: int) -> tuple[FinnViC, VidConv | None, list[torch.Tensor], dict[str, Any]]:
    """The FINN model to export (calibrated), the float model it came from, the clips it saw and a record of it all."""
    facts: dict[str, Any] = {}
    cfg = model.cfg
    if calib_clips:
        clips = [_clip_batch(c) for c in calib_clips]
        facts["calibration"] = f"{len(clips)} given clips"
    else:
        gen = torch.Generator().manual_seed(seed)
        clips = [torch.randn((1, cfg.frames, 3, *cfg.image_size), generator=gen) for _ in range(RANDOM_CALIB_CLIPS)]
        facts["calibration"] = f"{len(clips)} random clips (seed {seed}): no calibration clips given"
    if isinstance(model, FinnViC):
        if str(model.bits) != bits:
            raise UserError(f"the given FINN model is {model.bits}, not {bits}: pass --bits {model.bits}")
        facts["source"] = f"given {cfg.arch} FINN model ({model.bits}), used as is"
        with torch.no_grad():
            model.eval()(clips[0])  # as calibrate() ends: refreshes the I/O metadata Brevitas caches for export
        return model, None, clips, facts
    finn = from_float(model.eval(), bits)
    calibrate(finn, clips, reestimate_bn=cfg.norm == "layer")
    facts["source"] = f"{cfg.arch} float weights"
    facts["conversion"] = (f"{cfg.arch} -> FINN variant {bits}: BatchNorm, QuantReLU, gamma/alpha folded; "
                           "not quantization-aware trained: run vidconv-finetune --qat for accuracy")
    return finn, model, clips, facts


def export_qonnx(model: FinnViC, part: str, workdir: Path) -> Any:
    """Brevitas QONNX export of one graph part, loaded as a qonnx ModelWrapper."""
    from brevitas.export import export_qonnx as brevitas_export
    from qonnx.core.modelwrapper import ModelWrapper

    cfg = model.cfg
    if part == "early":
        example = torch.zeros(1, 3, *cfg.image_size)
    else:
        h, w = cfg.stage3_frame_size
        example = torch.zeros(1, cfg.grid[0] * h, cfg.grid[1] * w, cfg.dims[2])
    path = workdir / f"qonnx_{part}.onnx"
    brevitas_export(GraphPart(model, part).eval(), example, export_path=str(path))
    return ModelWrapper(str(path))


def tensor_io(model: Any) -> dict[str, Any]:
    def one(name: str) -> dict[str, Any]:
        return {"name": name, "shape": list(model.get_tensor_shape(name)), "datatype": model.get_tensor_datatype(name).name}

    return {"input": one(model.graph.input[0].name), "output": one(model.graph.output[0].name)}


def build_configs(board: Board, clk_ns: float) -> dict[str, dict[str, Any]]:
    """``finn build`` configs (DataflowBuildConfig fields) continuing from our folded dataflow graphs."""
    outputs = ["estimate_reports", "stitched_ip"] + (
        ["bitfile", "pynq_driver", "deployment_package"] if board.zynq_shell else ["out_of_context_synth"])
    configs = {}
    for graph in GRAPHS:
        config: dict[str, Any] = {
            "output_dir": f"output_{graph}",
            "synth_clk_period_ns": clk_ns,
            "fpga_part": board.part,
            "folding_config_file": f"../folding_config_{graph}.json",
            "generate_outputs": outputs,
            "steps": BUILD_STEPS,
        }
        if board.zynq_shell:
            config |= {"board": board.finn_board, "shell_flow_type": "vivado_zynq"}
        configs[graph] = config
    return configs


BUILD_SH = """#!/usr/bin/env bash
# Builds both FINN accelerators of this bundle with finn-plus's builder (needs Vivado + Vitis HLS:
# run inside the image from docker/finn, see docker_run.sh). Each graph is its own FINN build; a
# board running the clip needs both designs (the host tiles early's outputs into later's input).
set -euo pipefail
cd "$(dirname "$0")"
finn build early.json ../finn_dataflow_early.onnx
finn build later.json ../finn_dataflow_later.onnx
"""

DOCKER_SH = """#!/usr/bin/env bash
# Runs build.sh in the finn-plus image (docker/finn) with your Xilinx tools mounted read-only.
# XILINX_ROOT: the folder holding Vivado/<version> and Vitis_HLS/<version> (or Vitis/<version>).
set -euo pipefail
: "${{XILINX_ROOT:?set XILINX_ROOT to your Xilinx install, e.g. /tools/Xilinx}}"
: "${{XILINX_VERSION:?set XILINX_VERSION to the installed tool version, e.g. 2024.2}}"
bundle="$(cd "$(dirname "$0")/.." && pwd)"
docker run --rm -v "$XILINX_ROOT:$XILINX_ROOT:ro" -v "$bundle:/bundle" \\
  -e XILINX_ROOT -e XILINX_VERSION {image} bash /bundle/{build_dir}/build.sh
"""


def vivado_available() -> bool:
    """Vivado and the finn CLI are both here (as inside the docker/finn image)."""
    return bool(os.environ.get("XILINX_VIVADO")) and shutil.which("vivado") is not None and shutil.which("finn") is not None


def write_build(bundle: Bundle, board: Board, clk_ns: float) -> Path:
    """The ``finn_build/`` dir: per-graph configs, build.sh and docker_run.sh."""
    root = bundle.directory / BUILD_DIR
    for graph, config in build_configs(board, clk_ns).items():
        write_text(root / f"{graph}.json", json.dumps(config, indent=2) + "\n")
    write_text(root / "build.sh", BUILD_SH)
    write_text(root / "docker_run.sh", DOCKER_SH.format(image=IMAGE, build_dir=BUILD_DIR))
    for script in ("build.sh", "docker_run.sh"):
        (root / script).chmod(0o755)
    bundle.record_dir("finn_build", BUILD_DIR)
    return root / "build.sh"


def run_build(script: Path, board: Board, record: dict[str, Any]) -> dict[str, Any]:
    """Run ``finn build`` where Vivado is; otherwise mark ``record`` not run with why and how to build it."""
    what = "bitfile + PYNQ driver" if board.zynq_shell else "stitched IP + out-of-context synthesis"
    if not vivado_available():
        reason = (f"no Vivado here (XILINX_VIVADO unset or vivado/finn not on PATH): no {what} was built; "
                  f"run {BUILD_DIR}/docker_run.sh (image from docker/finn) to build it")
        record.update(status="not run", reason=reason, script=f"{BUILD_DIR}/build.sh",
                      docker_command=f"{BUILD_DIR}/docker_run.sh")
        return {"built": False, "reason": reason}
    outputs = [f"{BUILD_DIR}/output_{g}" for g in GRAPHS]
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True)
    write_text(script.parent / "build.log", proc.stdout + proc.stderr)
    record.update(returncode=proc.returncode, log=f"{BUILD_DIR}/build.log", outputs=outputs)
    if proc.returncode:
        record["status"] = "failed"
        return {"built": False, "reason": f"finn build failed (exit {proc.returncode}): see {BUILD_DIR}/build.log"}
    return {"built": True, "outputs": outputs}
