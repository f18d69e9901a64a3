"""The board dir: everything ``hw/board/run_xmodel.py`` needs on a board, in one folder to copy there.

``board.json`` says what the runner cannot read from the xmodels: the collage grid, image and
per-frame feature sizes, preprocessing (shorter side, center crop, mean/std on the 0-255 RGB scale:
those of :mod:`vidconv_deploy.data.video` unless given), class names, and per graph the file names
and our fix points of its input and output. Beside it: ``early.onnx`` / ``later.onnx``
(the QDQ graphs, for ``--backend reference``), ``early.xmodel`` / ``later.xmodel`` when vai_c_xir
built them (never otherwise: the runner says where to get them), ``golden/`` when given, and a copy
of the runner itself when this is a source checkout.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import onnx
from onnx import numpy_helper

from vidconv_deploy.atomic import write_bytes, write_text
from vidconv_deploy.data.video import IMAGENET_MEAN, IMAGENET_STD, default_short_side
from vidconv_deploy.check.ruleset import RuleSet
from vidconv_deploy.dpu.boards import dpu_board
from vidconv_deploy.runners import GRAPHS

BOARD_JSON = "board.json"
FORMAT = "vidconv-board/1"
#: The runner in a source checkout (hw/board); a wheel install does not carry it.
RUNNER = Path(str(resources.files("vidconv_deploy") / "board_runner" / "run_xmodel.py"))


def _scale_fix_point(model: onnx.ModelProto, scale_name: str) -> int:
    scale = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == scale_name)
    fix = -math.log2(float(scale))
    if fix != round(fix):
        raise ValueError(f"scale {float(scale)} of {scale_name} is not a power of two: quantize for the DPU")
    return int(round(fix))


def io_fix_points(model: onnx.ModelProto) -> tuple[int, int]:
    """Fix points of a QDQ graph's input (its QuantizeLinear) and output (the DequantizeLinear writing it)."""
    graph_in, graph_out = model.graph.input[0].name, model.graph.output[0].name
    q = next((n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == graph_in), None)
    dq = next((n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == graph_out), None)
    if q is None or dq is None:
        raise ValueError("the graph's input is not quantized or its output not dequantized: give the QDQ graph")
    return _scale_fix_point(model, q.input[1]), _scale_fix_point(model, dq.input[1])


def _shape(value: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value for d in value.type.tensor_type.shape.dim]


def write_board_dir(
    board_dir: Path,
    *,
    target: str | RuleSet,
    arch: str,
    grid: tuple[int, int],
    image_size: tuple[int, int],
    early: onnx.ModelProto,
    later: onnx.ModelProto,
    class_names: Sequence[str],
    mean: Sequence[float] = tuple(IMAGENET_MEAN),
    std: Sequence[float] = tuple(IMAGENET_STD),
    short_side: int | None = None,
    xmodels: Mapping[str, Path] | None = None,
    golden_dir: Path | None = None,
    runner: Path | None = RUNNER,
) -> Path:
    """Write the board dir for the QDQ streaming graphs ``early``/``later``; return ``board.json``'s path.

    ``xmodels`` maps ``early``/``later`` to vai_c_xir's outputs (``compile/xmodel/<graph>/<graph>.xmodel``).
    """
    board = dpu_board(target)
    classes = _shape(later.graph.output[0])[-1]
    if len(class_names) != classes:
        raise ValueError(f"{len(class_names)} class names for a model with {classes} classes")
    board_dir.mkdir(parents=True, exist_ok=True)
    (board_dir / BOARD_JSON).unlink(missing_ok=True)  # the dir is complete only once board.json is back
    graphs = {}
    for name, model in zip(GRAPHS, (early, later)):
        in_fix, out_fix = io_fix_points(model)
        write_bytes(board_dir / f"{name}.onnx", model.SerializeToString())
        source = (xmodels or {}).get(name)
        if source is not None:
            write_bytes(board_dir / f"{name}.xmodel", source.read_bytes())
        graphs[name] = {
            "xmodel": f"{name}.xmodel", "onnx": f"{name}.onnx",
            "input": model.graph.input[0].name, "output": model.graph.output[0].name,
            "input_shape": _shape(model.graph.input[0]), "output_shape": _shape(model.graph.output[0]),
            "input_fix_point": in_fix, "output_fix_point": out_fix,
        }
    if golden_dir is not None:
        shutil.rmtree(board_dir / "golden", ignore_errors=True)
        shutil.copytree(golden_dir, board_dir / "golden")
    if runner is not None and runner.is_file():
        write_bytes(board_dir / runner.name, runner.read_bytes())
        (board_dir / runner.name).chmod(0o755)
    info = {
        "format": FORMAT, "target": board.target, "board": board.name, "dpu": board.core,
        "dpu_fingerprint": board.fingerprint, "arch": arch,
        "grid": list(grid), "frames": grid[0] * grid[1], "image_size": list(image_size),
        "feature_shape": graphs["early"]["output_shape"][1:],
        "short_side": default_short_side(image_size) if short_side is None else short_side,
        "mean": [float(m) for m in mean], "std": [float(s) for s in std], "class_names": list(class_names),
        "graphs": graphs, "golden": "golden" if golden_dir is not None else None,
    }
    path = board_dir / BOARD_JSON
    write_text(path, json.dumps(info, indent=2) + "\n")
    return path
