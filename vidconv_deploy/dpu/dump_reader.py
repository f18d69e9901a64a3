"""Read a tensor dump taken on the board (or by the quantizer) in the layouts Xilinx's tools write.

Every layout holds raw int8 bytes of one tensor per ``.bin`` file, C order, 4-D maps NHWC, batch 1.
They differ in where the files lie and how they are named (Vitis-AI 3.5 sources; VAI =
Xilinx/Vitis-AI ``src/``):

- ``vart``: ``XLNX_ENABLE_DUMP=1`` (VAI ``vai_runtime/vart/dpu-runner/src/dpu_runner_base_imp.cpp``,
  ``dump_tensor``/``get_dump_filename``) writes ``dump/<subgraph>/{input,internal,output}/<engine>.<layer>.bin``,
  one file per DDR tensor; ``<layer>`` is the XIR tensor name with its ``(...)`` affixes removed
  (``xir::remove_xfix``, ``vai_runtime/xir/src/xir/util/tool_function.cpp``) and every character
  outside ``[0-9A-Za-z_]`` replaced by ``_`` (``layer_name``). Ops fused by the compiler have no file.
- ``xdputil``: ``xdputil run <xmodel> <in.bin>`` (VAI ``vai_library/usefultools/python/xdputil_component/run.py``,
  ``dump_outputs``) writes only the subgraph's outputs, ``<batch>.<name>.bin`` with ``/`` replaced by ``_``.
- ``deploy_check``: vai_q_pytorch ``export_xmodel(deploy_check=True)`` (VAI ``vai_quantizer/vai_q_pytorch/
  nndct_shared/compile/deploy_checker.py``) writes ``deploy_check_data_int/<Graph>/<node>_fix.bin``, the
  *first* output of each quantized node only, names with every character outside ``[0-9A-Za-z]``
  replaced by ``_``; ``<node>.bin`` next to it is the float32 copy (skipped here). The fix points are in
  vai_q's ``quant_info.json`` of the same output dir (``output``: ``{name: [[bit_width, fix_point]]}``),
  keyed by vai_q's names, which our compile step maps to ONNX node names in ``names.json``.
- ``golden``: our own golden-vector names (:func:`vidconv_deploy.dpu.golden.vart_file_name`), e.g.
  from ``run_xmodel.py`` on a host.

A board runs the early graph once per frame and each run overwrites the same files, so a dump of
several frames keeps each frame in a ``frame_<t>`` folder (deploy_check's own layout for
time steps, ``frame_<step>``); an early dump without one is frame 0. The graph a file belongs to is
the ``early``/``later`` in its path (vai_q names the graphs ``Early``/``Later``, see
``vidconv_deploy.dpu.vaiq_script``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from vidconv_deploy.errors import UserError

DEPLOY_CHECK_DIR = "deploy_check_data_int"
GRAPHS = ("early", "later")
_INDEXED = re.compile(r"^(\d+)\.(.+)$")  # <engine or batch>.<name> (VART dump, xdputil run)
_GOLDEN = re.compile(r"^(?:(early)_(\d+)__|(later)_)(.+)$")  # vart_file_name: early[3]/x -> early_3__x, later/x -> later_x


def sanitize(name: str) -> str:
    """VART's ``layer_name``: characters outside ``[0-9A-Za-z_]`` become ``_`` (deploy_check's rule maps ``_`` to itself too)."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def remove_xfix(name: str) -> str:
    """``xir::remove_xfix``: drop every ``(...)`` affix XIR adds to a name (``conv1(TRANSFERRED)`` -> ``conv1``)."""
    previous = None
    while previous != name:
        previous, name = name, re.sub(r"\([^()]*\)", "", name)
    return name


@dataclasses.dataclass(frozen=True)
class DumpFile:
    """One dumped int8 tensor: where it is, the graph run it belongs to and its name as the file spells it."""

    path: Path
    layout: str  # vart | xdputil | deploy_check | golden
    graph: str | None
    frame: int | None
    role: str | None  # input | output for VART's input/ and output/ folders, else None
    name: str  # the file's tensor name, sanitized, without engine index and _fix suffix

    def values(self) -> np.ndarray:
        """The raw int8 bytes, flat (the caller gives them a shape)."""
        return np.fromfile(self.path, dtype="<i1").astype(np.int8)


def _graph_and_frame(parts: tuple[str, ...]) -> tuple[str | None, int | None]:
    graph = frame = None
    for part in parts:
        low = part.lower()
        match = re.fullmatch(r"frame_(\d+)", low)
        if match:
            frame = int(match.group(1))
            continue
        for g in GRAPHS:
            if re.search(rf"(^|[^a-z]){g}([^a-z]|$)", low):
                graph = g
    return graph, frame


@dataclasses.dataclass(frozen=True)
class Dump:
    """A read dump dir: its tensor files, and the fix points it states (graph -> ONNX node name -> fix point)."""

    directory: Path
    files: tuple[DumpFile, ...]
    fix_points: dict[str, dict[str, int]]


def _deploy_check_fix_points(out_dir: Path) -> dict[str, int]:
    """ONNX node name -> fix point, from vai_q's quant_info.json and our names.json in vai_q's output dir."""
    info_file, names_file = out_dir / "quant_info.json", out_dir / "names.json"
    if not info_file.is_file() or not names_file.is_file():
        return {}
    try:
        info, names = (json.loads(f.read_text(encoding="utf-8")) for f in (info_file, names_file))
        return {names[key]: int(pairs[0][1]) for key, pairs in info["output"].items()
                if key in names and pairs and pairs[0] is not None}
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise UserError(f"{info_file} or {names_file} is not vai_q's quant_info.json / our names.json "
                        f"({type(err).__name__}: {err}): copy both from the vai_q output dir again") from None


def _read_file(path: Path, root: Path) -> DumpFile | None:
    rel = path.relative_to(root)
    parts = rel.parts[:-1]
    stem = remove_xfix(path.name[: -len(".bin")])
    graph, frame = _graph_and_frame(parts)
    graph = graph or _graph_and_frame((stem,))[0]  # vai_q's tensor names start with the graph's: Early::...
    if DEPLOY_CHECK_DIR in parts:
        if not stem.endswith("_fix") or stem.endswith(("_weight_fix", "_bias_fix")):
            return None  # float32 copies and parameters
        return DumpFile(path, "deploy_check", graph, frame, None, sanitize(stem[: -len("_fix")]))
    golden = _GOLDEN.match(stem)
    if golden and not parts:
        frame = int(golden.group(2)) if golden.group(2) is not None else None
        return DumpFile(path, "golden", golden.group(1) or golden.group(3), frame, None, golden.group(4))
    indexed = _INDEXED.match(stem)
    if indexed is None:
        return None
    if int(indexed.group(1)) != 0:
        return None  # batch 0 / engine 0 only: the golden vectors hold one clip
    low = [p.lower() for p in parts]
    role = next((r for r in ("input", "output") if r in low), None)
    layout = "vart" if role or "internal" in low else "xdputil"
    return DumpFile(path, layout, graph, frame, role, sanitize(indexed.group(2)))


def read_dump_dir(directory: Path) -> Dump:
    """Every int8 tensor file under ``directory``, in any of the layouts above; no usable file is a :class:`UserError`."""
    if not directory.exists():
        raise UserError(f"dump dir {directory} does not exist: give the folder the board's dump was copied to")
    if not directory.is_dir():
        raise UserError(f"dump dir {directory} is a file: give the folder that holds the dumped .bin files")
    files = [f for path in sorted(directory.rglob("*.bin")) if (f := _read_file(path, directory)) is not None]
    if not files:
        raise UserError(f"{directory} holds no dumped tensor (.bin files named <engine>.<tensor>.bin, <node>_fix.bin or "
                        f"golden names): dump with XLNX_ENABLE_DUMP=1, xdputil run or deploy_check=True and copy the files here")
    fix_points: dict[str, dict[str, int]] = {}
    for check_dir in sorted(directory.rglob(DEPLOY_CHECK_DIR)):
        for graph_dir in (d for d in check_dir.iterdir() if d.is_dir()):
            graph, _ = _graph_and_frame((graph_dir.name,))
            if graph is not None:
                fix_points.setdefault(graph, {}).update(_deploy_check_fix_points(check_dir.parent))
    return Dump(directory, tuple(files), fix_points)
