"""What a target family adds in code: its command-line options, their validation, its external tools.

Everything here runs before any work: a bad value, a flag that does not apply to the chosen target,
a missing required tool is a one-line error (exit 2) and nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from vidconv_deploy.check.dpu_config import DpuChoice
from vidconv_deploy.errors import UserError
from vidconv_deploy.quant.recovery import RECOVERY_METHODS
from vidconv_deploy.targets.registry import Target, Tool

#: Most calibration clips taken (without --calib each is a synthetic video made first).
MAX_CALIB_CLIPS = 1024
#: The options that name the DPU of a dpu-* target.
DPU_FLAGS = ("dpu_arch", "fingerprint", "arch_json")


def _package(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _program(name: str) -> str | None:
    return "on PATH" if shutil.which(name) else None


def add_calibration_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--calib", type=Path, help="calibration videos: a dataset folder or a folder of videos "
                                                  "(default: synthetic-motion videos made like the model's training data, as its card says)")
    group.add_argument("--calib-clips", type=int,
                       help="calibration clips (default: the recipe's, 16). Each clip's L frames and its collage are "
                            "calibration batches, and each tensor's position is the mode over them: more clips give "
                            "steadier positions (Vitis AI advises 100-1000 samples; 16 clips of 9 frames are 144) and "
                            "cost time in proportion: a ViC-T 224 clip takes about 1.5 s to calibrate on 2 idle cores")
    group.add_argument("--eval", type=Path, help="dataset folder: score its test split and put accuracy in the report")


def add_dpu_arguments(group: argparse._ArgumentGroup) -> None:
    """The DPU the bundle is for (at most one; default: the board's, hw/rules/dpu-<board>.yaml board.dpu)."""
    group.add_argument("--dpu-arch", metavar="NAME", help="the board's DPU by name, e.g. B3136 (the KV260's Kria app "
                                                          "overlays) or B4096; the rule set lists the names")
    group.add_argument("--fingerprint", metavar="0x...", help="the DPU's fingerprint as `xdputil query` prints it on the board")
    group.add_argument("--arch-json", metavar="FILE", help="the arch.json you will compile with (vai_c_xir -a)")
    group.add_argument("--quant-recovery", choices=RECOVERY_METHODS, help="INT8 accuracy recovery after calibration, "
                       "vai_q_pytorch's bias correction or fast finetune (default: the recipe's quantizer.recovery, none)")


def add_crosscheck_argument(group: argparse._ArgumentGroup) -> None:
    """vidconv-export only: a second quantizer's opinion on the bundle's INT8 graphs (step crosscheck_quark)."""
    group.add_argument("--crosscheck", choices=["quark"], help="also quantize both streaming graphs with AMD Quark XINT8 "
                                                               "and report, tensor by tensor, where it differs and why")


def dpu_choice(options: argparse.Namespace) -> DpuChoice | None:
    """The DPU named by --dpu-arch, --fingerprint or --arch-json (None: the board's); two of them is an error."""
    given = [DpuChoice(flag, str(getattr(options, flag))) for flag in DPU_FLAGS if getattr(options, flag, None) is not None]
    if len(given) > 1:
        raise UserError(f"{given[0]} and {given[1]} both name the DPU: give one of --dpu-arch, --fingerprint, --arch-json")
    return given[0] if given else None


def with_dpu(target: Target, options: argparse.Namespace) -> Target:
    """``target`` for the DPU the options name, its rule set resolved now (a bad choice fails before any work)."""
    chosen = dataclasses.replace(target, dpu=dpu_choice(options))
    _ = chosen.ruleset
    return chosen


def add_finn_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--bits", help="FINN weight/activation bits wXaY (default: the recipe's, w4a4)")
    group.add_argument("--fps", type=float, help="FINN folding target in clips per second (default: fully folded, smallest)")
    group.add_argument("--allow-unfit", action="store_true", help="exit 0 even when the design does not fit the board")


def validate_calibration(target: Target, options: argparse.Namespace) -> None:
    """--calib and --eval name readable folders, --calib-clips is 1 to MAX_CALIB_CLIPS (checked before any work)."""
    if options.calib_clips is None:
        options.calib_clips = int(target.calibration.get("clips", 16))
    if not 1 <= options.calib_clips <= MAX_CALIB_CLIPS:
        raise UserError(f"--calib-clips {options.calib_clips}: give 1 to {MAX_CALIB_CLIPS} calibration clips")
    if options.calib is not None and not options.calib.is_dir():
        raise UserError(f"--calib {options.calib} is not a folder: give a dataset folder or a folder of videos")
    if options.eval is not None:
        from vidconv_deploy.data.sources import open_split

        if not options.eval.is_dir():
            raise UserError(f"--eval {options.eval} is not a folder: give a dataset folder (vidconv-make-data) "
                            f"with a test split")
        if not open_split(options.eval, "test").items:
            raise UserError(f"--eval {options.eval}: its test split lists no videos: give a dataset with test videos")


def quant_recovery(target: Target, options: argparse.Namespace) -> str:
    """The INT8 recovery of a dpu-* export: --quant-recovery, else the recipe's quantizer.recovery (default none)."""
    given = getattr(options, "quant_recovery", None)  # library callers may pass options without it
    return given if given is not None else str(target.quantizer.get("recovery", "none"))


def validate_dpu(target: Target, options: argparse.Namespace) -> None:
    """The recipe's quantizer.recovery names a recovery (the flag's choices are checked by argparse); then the
    calibration options. ``--crosscheck quark`` needs amd-quark importable (checked here, not when the step comes)."""
    recovery = quant_recovery(target, options)
    if recovery not in RECOVERY_METHODS:
        raise UserError(f"recipe {target.name}: quantizer.recovery {recovery!r} is not one of {', '.join(RECOVERY_METHODS)}; "
                        "fix the recipe or give --quant-recovery")
    if getattr(options, "crosscheck", None) == "quark":
        from vidconv_deploy.quark.env import import_quark

        try:
            import_quark()
        except UserError as err:
            raise UserError(f"--crosscheck quark: {err}") from None
    validate_calibration(target, options)


def validate_finn(target: Target, options: argparse.Namespace) -> None:
    """finn-plus is here, --bits parses, --fps is positive; then the calibration options."""
    from vidconv_deploy.finn.finn_env import require_finn
    from vidconv_deploy.finn.model import Bits

    require_finn()
    given = options.bits if options.bits is not None else str(target.quantizer.get("bits", "w4a4"))
    options.bits = str(Bits.parse(given))
    if options.fps is not None and not (options.fps > 0 and math.isfinite(options.fps)):
        raise UserError(f"--fps {options.fps:g}: give a positive folding target in clips per second (or leave it out)")
    validate_calibration(target, options)


def onnx_tools(target: Target) -> list[Tool]:
    return [Tool("onnxruntime", "runs and checks every graph", _package("onnxruntime")),
            Tool("onnxsim", "simplifies every graph", _package("onnxsim"))]


def dpu_tools(target: Target) -> list[Tool]:
    from vidconv_deploy.dpu.compile import vai_python

    nndct = vai_python()
    return [*onnx_tools(target),
            Tool("vai_q_pytorch", "quantizes the graphs inside the Vitis AI image (compile/quantize_vaiq.py)",
                 ("importable" if importlib.util.find_spec("pytorch_nndct") else nndct) if nndct else None),
            Tool("vai_c_xir", "compiles the xmodel for the board's arch.json", _program("vai_c_xir")),
            Tool("docker", "runs compile/docker_run.sh (image from docker/vitis-ai)", _program("docker"))]


def finn_tools(target: Target) -> list[Tool]:
    vivado = os.environ.get("XILINX_VIVADO") if shutil.which("vivado") else None
    return [Tool("finn-plus", "streamlining, HW layers, folding and estimates", _package("finn-plus")),
            Tool("brevitas", "the quantized model and its QONNX export", _package("brevitas")),
            Tool("vivado", "finn build: stitched IP, bitfile, PYNQ driver (finn_build/docker_run.sh)", vivado),
            Tool("finn", "the finn CLI that runs finn_build/build.sh", _program("finn")),
            Tool("docker", "runs finn_build/docker_run.sh (image from docker/finn)", _program("docker"))]


def validate_vaiep(target: Target, options: argparse.Namespace) -> None:
    """amd-quark 0.13 is here (scripts/quark-install.sh), the recipe's precision keys are valid for the device;
    then the calibration options."""
    from vidconv_deploy.quark.env import import_quark
    from vidconv_deploy.targets.vaiep_steps import recipe_precision

    import_quark()
    recipe_precision(target)  # quantizer.precision, bf16_nodes, bf16_auto
    validate_calibration(target, options)


def vaiep_tools(target: Target) -> list[Tool]:
    import onnxruntime

    ep = "in this onnxruntime" if "VitisAIExecutionProvider" in onnxruntime.get_available_providers() else None
    return [*onnx_tools(target), Tool("amd-quark", "quantizes both streaming graphs (quark/)", _package("amd-quark")),
            Tool("VitisAIExecutionProvider", "compiles the QDQ graphs for the DPU/NPU on first load (ep/run_ep.py)", ep)]


@dataclasses.dataclass(frozen=True)
class Family:
    """A target family: the option groups it takes, how it validates them, the tools it drives."""

    name: str
    flags: tuple[str, ...]
    validate: Callable[[Target, argparse.Namespace], None]
    tools: Callable[[Target], list[Tool]]
    #: The step that drives tools absent from many machines, and those tools (without them it is written, not run).
    tool_step: tuple[str, tuple[str, ...]] | None = None

    def absent(self, target: Target) -> dict[str, list[str]]:
        """Steps of ``target`` that cannot run here, with the tools they lack."""
        if self.tool_step is None or self.tool_step[0] not in target.step_names:
            return {}
        step, names = self.tool_step
        missing = [t.name for t in self.tools(target) if t.name in names and not t.available]
        return {step: missing} if missing else {}


FAMILIES: dict[str, Family] = {
    "onnx": Family("onnx", (), lambda target, options: None, onnx_tools),
    "dpu": Family("dpu", ("calib", "calib_clips", "eval", "quant_recovery", "crosscheck", *DPU_FLAGS), validate_dpu, dpu_tools,
                  ("compile_xmodel", ("vai_q_pytorch", "vai_c_xir"))),
    "finn": Family("finn", ("calib", "calib_clips", "eval", "bits", "fps", "allow_unfit"), validate_finn, finn_tools,
                   ("finn_build", ("vivado", "finn"))),
    "vaiep": Family("vaiep", ("calib", "calib_clips", "eval"), validate_vaiep, vaiep_tools,
                    ("ep_compile", ("VitisAIExecutionProvider",))),
}
#: Every family-specific flag, by the families that take it (a flag given to another family is an error).
FAMILY_FLAGS = {flag for f in FAMILIES.values() for flag in f.flags}


def family(name: str) -> Family:
    return FAMILIES[name]


def add_family_arguments(parser: argparse.ArgumentParser) -> None:
    """Every family's option group (so --help lists them all); each flag's default is None (= not given)."""
    add_calibration_arguments(parser.add_argument_group("calibration and accuracy (dpu-* and finn-* targets)"))
    dpu = parser.add_argument_group("the DPU (dpu-* targets; default: the board's)")
    add_dpu_arguments(dpu)
    add_crosscheck_argument(dpu)
    add_finn_arguments(parser.add_argument_group("FINN (finn-* targets)"))


def reject_foreign_flags(target: Target, options: argparse.Namespace) -> None:
    """A family flag given to a target of another family is an error: it would be silently ignored."""
    accepted = family(target.family).flags
    for flag in sorted(FAMILY_FLAGS - set(accepted)):
        if getattr(options, flag) not in (None, False):
            takers = [f.name for f in FAMILIES.values() if flag in f.flags]
            names = [t + "-*" for t in takers]
            listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
            raise UserError(f"--{flag.replace('_', '-')} applies to {listed} targets, "
                            f"not {target.name}: drop it or choose such a target")
