"""``vidconv-export --target finn-<board>``: Brevitas model -> QONNX -> finn-plus -> estimates -> bundle.

Writes into a :class:`Bundle`, per graph (``early``: one frame; ``later``: one collage):
``qonnx_<graph>`` (Brevitas export), ``finn_streamlined_<graph>`` (integer FINN-ONNX after
streamlining, the host's input quantizer and output scale peeled off), ``finn_dataflow_<graph>`` (HW
layers specialized for the board's part and folded), ``folding_config_<graph>`` (FINN ApplyConfig
JSON); and once: ``finn_report`` (see :mod:`.report`), ``finn_build/`` (the ``finn build`` configs
and scripts for a machine with Vivado) and ``finn_log``. Without Vivado no bitfile is built and the
manifest says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from torch import nn

from vidconv_deploy.atomic import write_text
from vidconv_deploy.checkpoints import save_checkpoint
from vidconv_deploy.errors import UserError
from vidconv_deploy.export.bundle import Bundle
from vidconv_deploy.finn import finn_env
from vidconv_deploy.finn.boards import Board, get_board
from vidconv_deploy.finn.checkpoint import save_finn_checkpoint
from vidconv_deploy.finn.layer_error import quantizer_sqnr
from vidconv_deploy.finn.model import Bits, FinnViC, GraphPart, calibrate, from_float
from vidconv_deploy.finn.report import GRAPHS, finn_report, print_report
from vidconv_deploy.models.vidconv import VidConv

#: Clips the bit-exact chain runs (each: early graph per frame, later graph once, in four forms).
CHAIN_CLIPS = 2
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


def _tensor_io(model: Any) -> dict[str, Any]:
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


def run_build(bundle: Bundle, script: Path, board: Board) -> dict[str, Any]:
    """Run ``finn build`` where Vivado is; otherwise record that no bitfile was built and how to build it."""
    what = "bitfile + PYNQ driver" if board.zynq_shell else "stitched IP + out-of-context synthesis"
    if not vivado_available():
        reason = (f"no Vivado here (XILINX_VIVADO unset or vivado/finn not on PATH): no {what} was built; "
                  f"run {BUILD_DIR}/docker_run.sh (image from docker/finn) to build it")
        bundle.not_run("finn build", reason, script=f"{BUILD_DIR}/build.sh", docker_command=f"{BUILD_DIR}/docker_run.sh")
        return {"built": False, "reason": reason}
    outputs = [f"{BUILD_DIR}/output_{g}" for g in GRAPHS]
    with bundle.step("finn build") as record:
        proc = subprocess.run(["bash", str(script)], capture_output=True, text=True)
        write_text(script.parent / "build.log", proc.stdout + proc.stderr)
        record |= {"returncode": proc.returncode, "log": f"{BUILD_DIR}/build.log", "outputs": outputs}
    if proc.returncode:
        raise RuntimeError(f"finn build failed (exit {proc.returncode}): see {BUILD_DIR}/build.log")
    return {"built": True, "outputs": outputs}


@dataclasses.dataclass
class GraphRun:
    """One graph through the flow."""

    forms: Any = None
    host: Any = None
    unmapped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    estimate: dict[str, Any] | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


def export_finn_bundle(bundle: Bundle, model: nn.Module, board: str, bits: str = "w4a4",
                       fps: float | None = None, calib_clips: list[torch.Tensor] | None = None,
                       seed: int = 0, teacher: VidConv | None = None) -> dict[str, Any]:
    """Run the FINN flow for ``board`` into ``bundle``; return the report and the verdicts.

    ``model``: a float VidConv (converted and calibrated), a :class:`FinnViC` (e.g. after QAT, used
    as is). ``fps``: target clips per second for folding (None:
    every layer fully folded, the smallest design). ``teacher``: the float model a given FinnViC was
    trained from, kept in the bundle as its float reference. The caller exits non-zero unless ``mapped`` and
    ``bit_exact``; ``fits`` is the resource verdict. Pass ``manifest`` to ``bundle.finish``.
    """
    finn_env.require_finn()
    from vidconv_deploy.finn import flow
    from vidconv_deploy.finn.chain import GraphForms, verify_chain

    target = get_board(board)
    bits = str(Bits.parse(bits))
    if fps is not None and fps <= 0:
        raise UserError(f"--fps {fps} must be positive (clips per second)")
    runs = {graph: GraphRun() for graph in GRAPHS}
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="vidconv-finn-") as tmp, finn_env.finn_session() as log, \
            Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                     transient=True) as progress:
        workdir = Path(tmp)
        task = progress.add_task("FINN model", total=None)

        def stage(text: str) -> None:
            progress.update(task, description=text)

        with bundle.step("FINN model") as record:
            finn_model, float_model, clips, facts = prepare_model(model, bits, calib_clips, seed)
            float_model = float_model or teacher
            record |= {"bits": bits, **facts}
            # Both models in the bundle: vidconv-eval scores them (the FINN one is bit-exact with the accelerator).
            save_finn_checkpoint(finn_model, bundle.directory / "finn_model.safetensors")
            bundle.record_file("finn_checkpoint", "finn_model.safetensors")
            if float_model is not None:
                save_checkpoint(float_model, bundle.directory / "float_model.safetensors")
                bundle.record_file("float_checkpoint", "float_model.safetensors")
        cfg = finn_model.cfg
        for graph, run in runs.items():
            stage(f"{graph}: QONNX export")
            with bundle.step(f"export QONNX {graph}"):
                qonnx = export_qonnx(finn_model, graph, workdir)
                bundle.write_onnx(f"qonnx_{graph}", f"qonnx_{graph}.onnx", qonnx.model)
            stage(f"{graph}: ConvertQONNXtoFINN + streamline")
            with bundle.step(f"streamline {graph}"):
                streamlined, run.host = flow.streamline(flow.to_finn(qonnx))
                bundle.write_onnx(f"finn_streamlined_{graph}", f"finn_streamlined_{graph}.onnx", streamlined.model)
            stage(f"{graph}: convert to HW layers")
            with bundle.step(f"convert to HW layers {graph}") as record:
                hw = flow.convert_to_hw(streamlined)
                run.unmapped = flow.unmapped_nodes(hw)
                record["unmapped_nodes"] = len(run.unmapped)
            run.forms = GraphForms(qonnx, streamlined, hw)
            bundle.io[f"finn_streamlined_{graph}"] = {**_tensor_io(streamlined), "host": run.host.to_dict()}
        mapped = not any(run.unmapped for run in runs.values())
        chain: dict[str, Any] = {"bit_exact": False, "reason": "not run: unmapped nodes"}
        if mapped:
            stage("bit-exact chain (Brevitas, QONNX, FINN)")
            with bundle.step("verify bit-exact chain") as record:
                chain = verify_chain(finn_model, runs["early"].forms, runs["later"].forms, clips[:CHAIN_CLIPS])
                record |= {"bit_exact": chain["bit_exact"], "clips": chain["clips"]}
            for graph, run in runs.items():
                stage(f"{graph}: dataflow partition, specialize, fold")
                frames = cfg.frames if graph == "early" else 1
                with bundle.step(f"dataflow {graph}") as record:
                    cycles = flow.target_cycles(None if fps is None else fps * frames)
                    dataflow = flow.specialize_and_fold(run.forms.finn_hw, target.part, cycles, workdir / f"df_{graph}",
                                                        flow.URAM_MIN_BRAM if target.budget["URAM"] else None)
                    run.notes = dataflow.notes
                    record |= {"part": target.part, "target_cycles": cycles}
                    bundle.write_onnx(f"finn_dataflow_{graph}", f"finn_dataflow_{graph}.onnx", dataflow.model.model)
                    bundle.write_json(f"folding_config_{graph}", f"folding_config_{graph}.json", dataflow.folding)
                    bundle.io[f"finn_dataflow_{graph}"] = _tensor_io(dataflow.model)
                with bundle.step(f"estimate {graph}"):
                    run.estimate = flow.estimate(dataflow.model, target.part)
        else:
            unmapped = "unmapped nodes: " + ", ".join(
                f"{g}/{n['node']} ({n['op_type']})" for g, r in runs.items() for n in r.unmapped)
            for step in ("verify bit-exact chain", "dataflow", "estimate", "finn build"):
                bundle.not_run(step, unmapped)
        stage("per-layer error")
        with bundle.step("per-layer error"):
            layer_sqnr = quantizer_sqnr(finn_model, clips[:CHAIN_CLIPS])
        stage("report")
        estimates = {g: r.estimate for g, r in runs.items()} if mapped else None
        report = finn_report(target, bits, cfg.frames, flow.CLK_NS, {g: r.unmapped for g, r in runs.items()}, estimates, {
            "host": {g: r.host.to_dict() for g, r in runs.items()},
            "chain": chain,
            "layer_sqnr": {"clips": len(clips[:CHAIN_CLIPS]), "quantizers": layer_sqnr},
            "folding": {"target_fps": fps, "policy": "SetFolding to the target" if fps else
                        "no --fps: every layer fully folded (PE = SIMD = 1), the smallest design",
                        "notes": {g: r.notes for g, r in runs.items()}},
            "model": {"arch": cfg.arch, **facts},
            "workarounds": list(finn_env.WORKAROUNDS),
            "tools": finn_env.versions(),
        })
        bundle.write_json("finn_report", "finn_report.json", report)
        bundle.write("finn_log", "finn_log.txt", log.getvalue())
        if mapped:
            script = write_build(bundle, target, flow.CLK_NS)
    build = run_build(bundle, script, target) if mapped else {"built": False, "reason": "unmapped nodes"}
    print_report(report, console)
    return {
        "report": report,
        "mapped": mapped,
        "bit_exact": bool(chain["bit_exact"]),
        "fits": report["fits"],
        "build": build,
        "manifest": {"finn": {"board": target.name, "bits": bits, "bitfile": build.get("outputs") or
                              f"not built: {build['reason']}"}},
    }
