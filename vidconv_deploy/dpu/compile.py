"""The Vitis AI compile step: vai_q_pytorch quantization, fix-position comparison, vai_c_xir compile.

:func:`prepare_compile` always writes the bundle's ``compile/`` dir: the streaming graphs as layer
lists (``model/``, see :mod:`vidconv_deploy.dpu.graph_spec`), the calibration samples
(``calib/early.npy``: frames; ``calib/later.npy``: collages of the float early outputs),
``quantize_vaiq.py``, ``compile.sh`` and ``docker_run.sh`` (the exact ``docker run`` command for the
image built from ``docker/vitis-ai``). Nothing in ``compile/`` names a host path: the scripts find
the bundle from their own location, so a bundle still compiles after it is moved or copied to
another machine (the ``/opt/vitis_ai`` paths are inside the image). :func:`run_compile` runs
``compile.sh`` where the tools are (inside that image) and otherwise returns, and records in the
manifest, what did not run and why.
It never writes an xmodel itself: every xmodel in ``compile/xmodel/`` comes from vai_c_xir.

Compile for a board (Vitis-AI-Tutorials 3.5 ``run_compile.sh``):
``vai_c_xir -x <Graph>_int.xmodel -a /opt/vitis_ai/compiler/arch/<DPU>/<BOARD>/arch.json -o <dir> -n <name>``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from vidconv_deploy.atomic import atomic_path, write_bytes, write_text
from vidconv_deploy.bundle import Bundle
from vidconv_deploy.check.ruleset import RuleSet
from vidconv_deploy.dpu import vaiq_script
from vidconv_deploy.dpu.boards import DpuBoard, dpu_board
from vidconv_deploy.dpu.graph_spec import graph_spec
from vidconv_deploy.errors import UserError
from vidconv_deploy.runners import GRAPHS, OnnxRuntimeRunner, StreamingSplit
from vidconv_deploy.version import __version__

COMPILE_DIR = "compile"
#: The image ``docker/vitis-ai`` builds (FROM xilinx/vitis-ai-pytorch-cpu, Vitis AI 3.5).
IMAGE = "vidconv-deploy/vitis-ai:3.5"
#: The Vitis AI 3.5 image's PyTorch env (conda at /opt/vitis_ai/conda; env vitis-ai-pytorch,
#: Vitis-AI ``docker/common/install_torch.sh``); ``VIDCONV_VAI_PYTHON`` overrides it.
VAI_PYTHON = "/opt/vitis_ai/conda/envs/vitis-ai-pytorch/bin/python"
STEP = "compile xmodel"


@dataclasses.dataclass(frozen=True)
class CompilePlan:
    """A written ``compile/`` dir: what :func:`run_compile` runs, for which board."""

    bundle_dir: Path
    compile_dir: Path
    board: DpuBoard
    arch_json: str
    quant_info: Mapping[str, Path]
    docker_command: str  # relative to the bundle, for the manifest: compile/docker_run.sh

    @property
    def script(self) -> Path:
        return self.compile_dir / "compile.sh"


@dataclasses.dataclass(frozen=True)
class FixPointDifference:
    """A tensor whose fix position differs between our quantizer and vai_q_pytorch."""

    tensor: str
    vaiq_name: str
    kind: str  # param | output | input (vai_q's quant_info.json section)
    ours: int
    vaiq: int


@dataclasses.dataclass(frozen=True)
class FixPointComparison:
    """Our fix positions against vai_q's: differences, and tensors only one side quantizes."""

    matched: int
    differences: tuple[FixPointDifference, ...]
    only_vaiq: tuple[str, ...]
    only_ours: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"matched": self.matched, "differences": [dataclasses.asdict(d) for d in self.differences],
                "only_vaiq": list(self.only_vaiq), "only_ours": list(self.only_ours)}


@dataclasses.dataclass(frozen=True)
class CompileResult:
    """What the compile step did: ``ran`` is True only when vai_q and vai_c_xir both finished."""

    ran: bool
    reason: str
    xmodels: tuple[Path, ...] = ()
    fix_point_differences: Mapping[str, FixPointComparison] = dataclasses.field(default_factory=dict)
    log: Path | None = None

    def record(self, root: Path) -> dict[str, Any]:
        """The manifest's facts (paths relative to the bundle ``root``)."""
        return {
            "ran": self.ran, "reason": self.reason,
            "xmodels": [str(p.relative_to(root)) for p in self.xmodels],
            "fix_points": {g: c.to_dict() for g, c in self.fix_point_differences.items()},
            **({"log": str(self.log.relative_to(root))} if self.log else {}),
        }


def vai_python() -> str | None:
    """The Python that has vai_q_pytorch: this one, ``$VIDCONV_VAI_PYTHON``, or the Vitis AI image's env."""
    if importlib.util.find_spec("pytorch_nndct") is not None:
        return sys.executable
    for candidate in (os.environ.get("VIDCONV_VAI_PYTHON"), VAI_PYTHON):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def missing_tools() -> list[str]:
    """Why the Vitis AI tools cannot run here (empty when they can)."""
    missing = []
    if vai_python() is None:
        missing.append(f"pytorch_nndct (vai_q_pytorch) is not importable and {VAI_PYTHON} does not exist")
    if shutil.which("vai_c_xir") is None:
        missing.append("vai_c_xir is not on PATH")
    return missing


def _frames(clip: np.ndarray, frame_shape: Sequence[int]) -> np.ndarray:
    clip = np.asarray(clip, dtype=np.float32)
    if clip.ndim == 5 and clip.shape[0] == 1:
        clip = clip[0]
    if clip.ndim != 4 or tuple(clip.shape[1:]) != tuple(frame_shape[1:]):
        raise UserError(f"calibration clip of shape {clip.shape} does not fit frames {tuple(frame_shape[1:])}: "
                        f"give clips as (L, 3, H, W) at the model's image size")
    return clip


def calibration_samples(
    early: onnx.ModelProto, later: onnx.ModelProto, calib_clips: Sequence[np.ndarray], grid: tuple[int, int],
    feeds: tuple[Sequence[Mapping[str, np.ndarray]], Sequence[Mapping[str, np.ndarray]]] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-graph calibration inputs, one batch-1 array per sample: every frame for the early graph, each
    clip's float collage for the later (kept apart: :func:`_save_npy_rows` writes them one by one).

    ``feeds``: the streaming split's feeds over these clips when the caller already has them (the
    export computes them once for our quantizer), so the early graph is not run over the set twice.
    """
    if not calib_clips:
        raise UserError("no calibration clips: give --calib DIR with at least one video")
    if feeds is not None:
        frames, collages = feeds
        return [next(iter(f.values())) for f in frames], [next(iter(c.values())) for c in collages]
    spec_in = early.graph.input[0]
    frame_shape = [d.dim_value for d in spec_in.type.tensor_type.shape.dim]
    clips = []
    for clip in calib_clips:
        clip = _frames(clip, frame_shape)
        if clip.shape[0] != grid[0] * grid[1]:
            raise UserError(f"calibration clip has {clip.shape[0]} frames, the {grid[0]}x{grid[1]} collage needs {grid[0] * grid[1]}")
        clips.append(clip)
    split = StreamingSplit(grid, OnnxRuntimeRunner(early), OnnxRuntimeRunner(later))
    frames, collages = split.feeds(clips)
    return [f[split.early.input_names[0]] for f in frames], [c[split.later.input_names[0]] for c in collages]


def _save_npy_rows(path: Path, rows: Sequence[np.ndarray]) -> None:
    """``np.concatenate(rows)`` as a float32 .npy file, written one row block at a time: ViC-T 224's 64
    calibration clips are 347 MB of frames, which as one array and its float32 copy raised the export's
    peak RSS by 0.7 GB (to 4.0 GiB). ``rows``: at least one (:func:`calibration_samples` refuses no clips)."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
              "shape": (sum(r.shape[0] for r in rows), *rows[0].shape[1:])}
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for row in rows:
            f.write(np.ascontiguousarray(row, dtype=np.float32).tobytes())


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Straight to the file (a whole graph's weights, not a second copy in memory first)."""
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays)


def compile_script(board: DpuBoard, arch_json: str) -> str:
    """``compile.sh``: the arch.json's fingerprint against the bundle's, then vai_q_pytorch and vai_c_xir for
    each streaming graph, logs in ``logs/``."""
    return f"""#!/usr/bin/env bash
# Quantize the streaming split with vai_q_pytorch and compile it for {board.name} ({board.core}) with vai_c_xir.
# Runs inside the Vitis AI 3.5 image built from docker/vitis-ai (docker_run.sh beside this file has the command).
# Written by vidconv-deploy {__version__}. Outputs: vaiq/<graph>/ (quant_info.json, <Graph>_int.xmodel, names.json)
# and xmodel/<graph>/<graph>.xmodel, the files to copy to the board.
set -euo pipefail
cd "$(dirname "$0")"
VAI_PYTHON="${{VAI_PYTHON:-{VAI_PYTHON}}}"
# The board's DPU must have this arch.json's fingerprint (check it on the board with: xdputil query).
ARCH_JSON="${{ARCH_JSON:-{arch_json}}}"
# The bundle's rule check, channel split and golden vectors assume the DPU with this fingerprint
# ({board.chosen_by}); vai_c_xir must not compile for another (checked up front when the arch.json is here,
# and before each vai_c_xir).
BUNDLE_FINGERPRINT={board.fingerprint}
check_arch_json() {{
  if [ ! -f "$ARCH_JSON" ]; then
    echo "compile.sh: $ARCH_JSON not found: set ARCH_JSON to the arch.json of the DPU with fingerprint $BUNDLE_FINGERPRINT" >&2
    exit 2
  fi
  found=$(tr -d ' \\t\\r\\n' < "$ARCH_JSON" | grep -o '"fingerprint":"0[xX][0-9a-fA-F]*"' | cut -d'"' -f4 || true)
  if [ -z "$found" ] || [ "$((found))" != "$((BUNDLE_FINGERPRINT))" ]; then
    echo "compile.sh: $ARCH_JSON has fingerprint ${{found:-none}} but the bundle was checked for $BUNDLE_FINGERPRINT ({board.core}): re-export with --arch-json $ARCH_JSON (vidconv-export --target {board.target} --arch-json FILE), or set ARCH_JSON to the arch.json of $BUNDLE_FINGERPRINT" >&2
    exit 2
  fi
}}
if [ -f "$ARCH_JSON" ]; then check_arch_json; fi
export PATH="$(dirname "$VAI_PYTHON"):$PATH"  # vai_c_xir lives in the same conda env
mkdir -p logs
for graph in {' '.join(GRAPHS)}; do
  "$VAI_PYTHON" quantize_vaiq.py --spec "model/$graph.json" --calib "calib/$graph.npy" \\
      --out "vaiq/$graph" --target {board.core} 2>&1 | tee "logs/quantize_$graph.log"
  quantized=$(ls "vaiq/$graph"/*_int.xmodel)
  check_arch_json
  vai_c_xir -x "$quantized" -a "$ARCH_JSON" -o "xmodel/$graph" -n "$graph" 2>&1 | tee "logs/compile_$graph.log"
done
"""


DOCKER_RUN_SH = """#!/usr/bin/env bash
# Runs compile.sh in the Vitis AI image; build the image first: docker/vitis-ai/README.md.
# The bundle is the folder above this script's, wherever the bundle has been moved or copied to.
set -euo pipefail
bundle="$(cd "$(dirname "$0")/.." && pwd)"
docker run --rm --user "$(id -u):$(id -g)" -e HOME=/tmp -v "$bundle:/bundle" -w /bundle/{compile_dir} {image} compile.sh
"""


def prepare_compile(
    bundle_dir: Path,
    target: str | RuleSet,
    early: onnx.ModelProto,
    later: onnx.ModelProto,
    calib_clips: Sequence[np.ndarray],
    grid: tuple[int, int],
    *,
    quant_info: Mapping[str, Path] | None = None,
    arch_json: Path | None = None,
    image: str = IMAGE,
    feeds: tuple[Sequence[Mapping[str, np.ndarray]], Sequence[Mapping[str, np.ndarray]]] | None = None,
) -> CompilePlan:
    """Write ``bundle_dir/compile/`` for ``target`` (a name: the board's default DPU; a rule set: the DPU it
    was resolved for) from the float streaming graphs and calibration clips.

    The arch.json compiled with: ``arch_json`` when given, else the user's ``--arch-json`` (copied), else for
    a DPU other than the board's default one holding only its fingerprint (what vai_c_xir reads from it),
    else the image's arch.json for the board. compile.sh checks its fingerprint before compiling.
    ``quant_info`` maps ``early``/``later`` to our quantizer's quant_info.json files (fix positions to
    compare with vai_q's);
    ``arch_json`` a host arch.json (e.g. ``{"fingerprint": "0x..."}`` read from the board with
    ``xdputil query``) to compile for instead of the image's arch.json for the board. ``feeds``: see
    :func:`calibration_samples`.
    """
    board = dpu_board(target)
    out = bundle_dir / COMPILE_DIR
    frames, collages = calibration_samples(early, later, calib_clips, grid, feeds)
    for name, model, samples in (("early", early, frames), ("later", later, collages)):
        spec, weights = graph_spec(model, name)
        write_text(out / "model" / f"{name}.json", json.dumps(spec, indent=1) + "\n")
        _save_npz(out / "model" / f"{name}.npz", weights)
        _save_npy_rows(out / "calib" / f"{name}.npy", samples)
    arch = board.arch_json
    given = arch_json if arch_json is not None else Path(board.user_arch_json) if board.user_arch_json else None
    if given is not None:
        if not given.is_file():
            raise UserError(f"arch.json {given} not found: write one with the board's fingerprint "
                            f'(xdputil query on the board), e.g. {{"fingerprint": "0x..."}}')
        write_bytes(out / "arch.json", given.read_bytes())
        arch = "arch.json"
    elif not board.default:
        write_text(out / "arch.json", json.dumps({"fingerprint": board.fingerprint}) + "\n")
        arch = "arch.json"
    write_text(out / "quantize_vaiq.py", Path(vaiq_script.__file__).read_text(encoding="utf-8"))
    write_text(out / "compile.sh", compile_script(board, arch))
    write_text(out / "docker_run.sh", DOCKER_RUN_SH.format(compile_dir=COMPILE_DIR, image=image))
    for script in ("compile.sh", "docker_run.sh"):
        (out / script).chmod(0o755)
    return CompilePlan(bundle_dir, out, board, arch, dict(quant_info or {}), f"{COMPILE_DIR}/docker_run.sh")


SECTIONS = ("param", "output", "input")


def read_quant_info(path: Path) -> dict[str, Any]:
    """Read a quant_info.json (ours or vai_q's); an unreadable file is a :class:`UserError`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read fix positions from {path} ({err}): quantize the model again") from None


def fix_points(info: Mapping[str, Any]) -> dict[str, int]:
    """Fix position per tensor name from quant_info.json's ``param``/``output``/``input`` sections.

    Ours uses vai_q_pytorch's layout (``vidconv_deploy.quant``): each entry is a list of
    ``[bit_width, fix_position]``, one per output; the first counts, ``null`` means not quantized.
    """
    points = {}
    for kind in SECTIONS:
        for name, entries in info.get(kind, {}).items():
            fix = next((e[1] for e in entries or [] if e and e[1] is not None), None)
            if fix is not None:
                points[name] = int(fix)
    return points


def compare_fix_points(
    ours: Mapping[str, Any], vaiq: Mapping[str, Any], names: Mapping[str, str] | None = None
) -> FixPointComparison:
    """Compare our quant_info.json with vai_q's; ``names`` maps vai_q's tensor names to ours (names.json)."""
    names = names or {}
    mine = fix_points(ours)
    matched, differences, only_vaiq, seen = 0, [], [], set()
    for kind in SECTIONS:
        for key, fix in fix_points({kind: vaiq.get(kind, {})}).items():
            name = names.get(key, key)
            if name not in mine:
                only_vaiq.append(key)
                continue
            matched += 1
            seen.add(name)
            if mine[name] != fix:
                differences.append(FixPointDifference(name, key, kind, mine[name], fix))
    return FixPointComparison(matched, tuple(differences), tuple(only_vaiq), tuple(sorted(set(mine) - seen)))


def _vaiq_quant_info(directory: Path) -> Path | None:
    """vai_q 3.5 writes quant_info.json (nndct_shared/quantization/base_quantizer.py); older READMEs say Quant_info.json."""
    return next((p for p in (directory / "quant_info.json", directory / "Quant_info.json") if p.is_file()), None)


def run_compile(plan: CompilePlan, bundle: Bundle | None = None) -> CompileResult:
    """Run ``compile.sh`` where the Vitis AI tools are; otherwise say exactly what did not run and why."""
    missing = missing_tools()
    if missing:
        result = CompileResult(False, "; ".join(missing) + ": no xmodel was built; run compile/docker_run.sh "
                                                          "(the Vitis AI image from docker/vitis-ai) to build it")
        if bundle is not None:
            bundle.not_run(STEP, result.reason, script=f"{COMPILE_DIR}/compile.sh", docker_command=plan.docker_command)
        return result
    log = plan.compile_dir / "logs" / "compile.log"
    env = {**os.environ, "VAI_PYTHON": str(vai_python())}
    step = bundle.step(STEP) if bundle is not None else contextlib.nullcontext({})
    with step as record:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=Console(stderr=True), transient=True) as progress:
            progress.add_task(f"vai_q_pytorch + vai_c_xir for {plan.board.name}", total=None)
            proc = subprocess.run(["bash", str(plan.script)], env=env, capture_output=True, text=True)
        write_text(log, proc.stdout + proc.stderr)
        xmodels = tuple(sorted((plan.compile_dir / "xmodel").glob("*/*.xmodel")))
        if proc.returncode != 0:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            result = CompileResult(False, f"compile.sh failed (exit {proc.returncode}): {last[0]} "
                                          f"(full log: {COMPILE_DIR}/logs/compile.log)", xmodels, {}, log)
        else:
            result = CompileResult(True, "vai_q_pytorch and vai_c_xir finished", xmodels, compare_with_vaiq(plan), log)
        record.update(result.record(plan.bundle_dir))
        if not result.ran:
            record["status"] = "failed"
    return result


def compare_with_vaiq(plan: CompilePlan) -> dict[str, FixPointComparison]:
    """Per graph, our fix positions against vai_q's (for the graphs both quantizers wrote a quant_info.json)."""
    comparisons = {}
    for graph, ours_file in plan.quant_info.items():
        directory = plan.compile_dir / "vaiq" / graph
        info = _vaiq_quant_info(directory)
        if info is None:
            continue
        ours = read_quant_info(ours_file)
        names_file = directory / "names.json"
        names = json.loads(names_file.read_text()) if names_file.is_file() else {}
        comparisons[graph] = compare_fix_points(ours, read_quant_info(info), names)
    return comparisons
