"""vidconv-compare on dumps written here, in the layouts Xilinx's tools write, from the bundle's integer reference.

One small DPU bundle is exported per module. Its integer reference is rerun on the golden clip and
its tensors are laid out as VART's XLNX_ENABLE_DUMP, ``xdputil run`` and vai_q's deploy_check
write them (see vidconv_deploy.dpu.dump_reader); then single faults are injected and each must be
named exactly: the tensor and the cause.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from vidconv_deploy.cli.compare import main as compare_main
from vidconv_deploy.dpu.dump_compare import TieRecorder, compare_dump, diagnose, load_bundle, octaves, rescale
from vidconv_deploy.dpu.dump_reader import read_dump_dir, remove_xfix
from vidconv_deploy.dpu.golden import GoldenTensor, clip_golden, read_golden, to_layout
from vidconv_deploy.reference import run_reference

VIDCONV_COMPARE = Path(sys.executable).parent / "vidconv-compare"
STEM = "early[0]//stem/stem.0/Conv_output_0"
SPATIAL = "early[0]//stage1/stage1.0/spatial/Conv_output_0"
ADD = "early[0]//stage1/stage1.0/Add_output_0"
DOWN2 = "early[0]//down2/down2.0/Conv_output_0"
LATER_DOWN4 = "later//down4/down4.0/Conv_output_0"


@pytest.fixture(scope="module")
def bundle(dpu_bundle) -> Path:
    """The shared small DPU bundle (conftest)."""
    return dpu_bundle


@pytest.fixture(scope="module")
def host(bundle) -> dict[str, GoldenTensor]:
    """Every tensor of the golden clip, recomputed by the integer reference (DPU rounding), by key."""
    golden = read_golden(bundle / "golden")
    inputs = sorted((e for e in golden.entries if e.role == "input" and e.graph == "early"), key=lambda e: e.frame)
    clip = np.concatenate([golden.load(e).astype(np.float32) * np.float32(2.0**-e.fix_point) for e in inputs])
    early, later = (onnx.load(str(bundle / "quant" / f"{g}.onnx")) for g in ("early", "later"))
    tensors, _ = clip_golden(early, later, clip, tuple(golden.meta["grid"]))
    return {t.key: t for t in tensors}


def layer_names(bundle: Path, graph: str) -> dict[str, str]:
    """Tensor name -> the XIR name vai_q gives the layer that computes it (``Early::Early/Op[module]/output.n``)."""
    spec = json.loads((bundle / "compile" / "model" / f"{graph}.json").read_text())
    g = graph.capitalize()
    return {layer["output"]: f"{g}::{g}/{layer['module'].rsplit('_', 1)[-1]}[{layer['module']}]/output.{i}(fix)"
            for i, layer in enumerate(spec["layers"])}


def board_bytes(t: GoldenTensor) -> np.ndarray:
    return to_layout(t.values, "NCHW", "NHWC" if t.values.ndim == 4 else "NC")


def write_dump(bundle: Path, host: dict[str, GoldenTensor], root: Path, layout: str, faults=None, skip=()) -> Path:
    """The host tensors as a board dump in ``layout``; ``faults[key](nhwc) -> bytes`` replaces a tensor's data."""
    faults = faults or {}
    names = {g: layer_names(bundle, g) for g in ("early", "later")}
    for key, t in host.items():
        if key in skip or (layout != "vart" and t.frame not in (None, 0)):
            continue  # deploy_check and xdputil run on one input: the golden clip's first frame
        if layout == "deploy_check" and t.role == "input":
            continue  # vai_q's input node is not a layer of the spec: no name we could give it here
        data = np.asarray(faults[key](board_bytes(t)) if key in faults else board_bytes(t), dtype=np.int8)
        g = t.graph.capitalize()
        xir = f"{g}::input_0" if t.role == "input" else names[t.graph][t.name]
        if layout == "vart":  # dump/<subgraph>/{input,internal,output}/<engine>.<layer_name>.bin, one run per frame
            run = root / (f"frame_{t.frame}" if t.frame is not None else "later_run") / "dump" / f"subgraph_{g}__{g}_0"
            where = {"input": "input", "output": "output"}.get(t.role, "internal")
            path = run / where / f"0.{re.sub(r'[^0-9A-Za-z_]', '_', remove_xfix(xir))}.bin"
        elif layout == "deploy_check":  # <vai_q out dir>/deploy_check_data_int/<Graph>/<node>_fix.bin (+ float copy)
            path = root / t.graph / "deploy_check_data_int" / g / f"{re.sub(r'[^0-9A-Za-z]', '_', remove_xfix(xir))}_fix.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            data.astype(np.float32).tofile(path.with_name(path.name.replace("_fix.bin", ".bin")))
        else:  # xdputil run: <batch>.<name with / -> _>.bin, outputs only, in the folder it ran in
            if t.role != "output":
                continue
            path = root / f"0.{remove_xfix(xir).replace('/', '_')}.bin"  # one flat folder: the graph is in the name
        path.parent.mkdir(parents=True, exist_ok=True)
        data.tofile(path)
    if layout == "deploy_check":  # vai_q's quant_info.json (topological names) and our compile step's names.json
        for graph in ("early", "later"):
            info = json.loads((bundle / "quant" / f"{graph}_quant_info.json").read_text())
            topo = {f"{graph.capitalize()}::nndct_{i}": node for i, node in enumerate(info["output"])}
            (root / graph / "quant_info.json").write_text(json.dumps({"output": {k: info["output"][n] for k, n in topo.items()}}))
            (root / graph / "names.json").write_text(json.dumps(topo))
    return root


def run(argv, capsys) -> tuple[int, str, str]:
    code = compare_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---- the reference dump and its layouts -------------------------------------------------------------


def test_golden_vectors_are_what_the_integer_reference_computes(bundle, host):
    golden = read_golden(bundle / "golden")
    assert {e.key for e in golden.entries} == set(host)
    for e in golden.entries:
        np.testing.assert_array_equal(golden.load(e), host[e.key].values)


@pytest.mark.parametrize("layout,compared,layouts", [
    ("vart", 137, {"vart"}), ("deploy_check", 11 + 28, {"deploy_check"}), ("xdputil", 2, {"xdputil"}),
])
def test_a_clean_dump_matches_in_every_layout(bundle, host, tmp_path, layout, compared, layouts):
    dump = write_dump(bundle, host, tmp_path, layout)
    assert {f.layout for f in read_dump_dir(dump).files} == layouts
    report = compare_dump(bundle, dump)
    assert report.ok and report.first is None and report.unmatched == ()
    assert sum(r.status != "missing" for r in report.rows) == compared
    assert {r.status for r in report.rows} <= {"exact", "missing"}
    if layout == "deploy_check":  # it states its fix points: they agree with the bundle's
        rows = {r.key: r for r in report.rows}
        assert rows[STEM].dump_fix_point == rows[STEM].fix_point == 8
        assert "early[0]/frame_dequantized" in report.missing
    if layout == "xdputil":  # only the subgraphs' outputs
        assert [r.key for r in report.rows if r.status != "missing"] == ["early[0]/features", "later/logits"]


def test_rows_follow_the_board_order(bundle):
    keys = [t.key for t in load_bundle(bundle).tensors]
    assert keys[:3] == ["early[0]/frame_dequantized", STEM, SPATIAL]
    assert keys.index("early[0]/features") < keys.index("early[1]/frame_dequantized") < keys.index("later/collage_dequantized")
    assert keys[-1] == "later/logits"


# ---- injected faults, each named exactly ------------------------------------------------------------


def test_nchw_instead_of_nhwc_is_a_swapped_layout(bundle, host, tmp_path, capsys):
    nchw = {STEM: lambda x: np.ascontiguousarray(x.transpose(0, 3, 1, 2))}
    code, out, _ = run([bundle, write_dump(bundle, host, tmp_path, "vart", nchw), "--json"], capsys)
    report = json.loads(out.strip().splitlines()[-1])
    assert code == 1 and report["ok"] is False
    first = report["first_divergence"]
    assert (first["tensor"], first["name"]) == (STEM, "layout swapped")
    row = next(r for r in report["tensors"] if r["key"] == STEM)
    assert row["verdict"] == "first divergence" and row["status"] == "over" and row["max_lsb"] > 1
    assert sum(row["histogram"].values()) == 8 * 8 * 32


def test_a_wrong_fix_position_is_named_with_its_bits(bundle, host, tmp_path):
    report = compare_dump(bundle, write_dump(bundle, host, tmp_path, "vart", {SPATIAL: lambda x: rescale(x, 1)}))
    assert (report.first, report.cause.name, report.cause.shift) == (SPATIAL, "fix position differs", 1)
    assert report.cause.detail == ("the dump matches the bundle's codes moved by +1 bit: the board uses fix point 11, "
                                   "the bundle 10")


def test_a_fix_position_the_dump_states_is_checked(bundle, host, tmp_path):
    dump = write_dump(bundle, host, tmp_path, "deploy_check", {SPATIAL: lambda x: rescale(x, -2)})
    info_file = tmp_path / "early" / "quant_info.json"
    info = json.loads(info_file.read_text())
    names = json.loads((tmp_path / "early" / "names.json").read_text())
    key = next(k for k, n in names.items() if n == "/stage1/stage1.0/spatial/Conv")
    info["output"][key] = [[8, 8]]
    info_file.write_text(json.dumps(info))
    report = compare_dump(bundle, dump)
    row = next(r for r in report.rows if r.key == SPATIAL)
    assert (row.fix_point, row.dump_fix_point, row.status) == (10, 8, "fix point")
    assert (report.first, report.cause.name, report.cause.shift) == (SPATIAL, "fix position differs", -2)


def test_off_by_one_at_the_hosts_ties_is_the_rounding_mode(bundle, host, tmp_path):
    tensor = next(t for t in load_bundle(bundle).tensors if t.key == ADD)
    recorder = TieRecorder(load_bundle(bundle).graphs["early"])
    feed = host["early[0]/frame_dequantized"]
    recorder.run({"frame": feed.values.astype(np.float32) * np.float32(2.0**-feed.fix_point)}, rounding="dpu")
    ties = to_layout(recorder.ties[tensor.entry.name], "NCHW", "NHWC")
    assert int(ties.sum()) == 1022
    dump = write_dump(bundle, host, tmp_path, "vart", {ADD: lambda x: np.where(ties, x - 1, x)})
    assert compare_dump(bundle, dump).ok  # within the default tolerance of 1 LSB
    report = compare_dump(bundle, dump, tolerance_lsb=0)
    assert (report.first, report.cause.name) == (ADD, "rounding mode")
    assert report.cause.detail == ("1022 values differ by 1 LSB, each at a .5 tie of the host (1022 ties in the tensor): "
                                   "the board rounds them down, the bundle up (DPU_ROUND)")
    row = next(r for r in report.rows if r.key == ADD)
    assert row.histogram == {-1: 1022, 0: 8 * 8 * 32 - 1022}


def test_ties_are_where_the_two_roundings_can_differ(bundle, host):
    """Half up and half to even differ exactly at the ties whose half-up code is odd (a check of TieRecorder)."""
    early = load_bundle(bundle).graphs["early"]
    feed = host["early[0]/frame_dequantized"]
    feeds = {"frame": feed.values.astype(np.float32) * np.float32(2.0**-feed.fix_point)}
    recorder = TieRecorder(early)
    up = recorder.run(feeds, rounding="dpu").tensors["/stem/stem.0/Conv_output_0"].values
    even = run_reference(early, feeds, rounding="onnxruntime").tensors["/stem/stem.0/Conv_output_0"].values
    ties = recorder.ties["/stem/stem.0/Conv_output_0"]
    np.testing.assert_array_equal(up != even, ties & (up % 2 != 0))
    assert int(ties.sum()) == 4


def test_off_by_one_elsewhere_is_unexplained(bundle, host, tmp_path):
    def bump(x):
        x = x.copy()
        x[0, 0, 0, :3] += 1
        return x

    report = compare_dump(bundle, write_dump(bundle, host, tmp_path, "vart", {DOWN2: bump}), tolerance_lsb=0)
    assert (report.first, report.cause.name) == (DOWN2, "unexplained")
    assert report.cause.detail.startswith("3 values differ, by up to 1 LSB")


def test_values_clipped_on_the_board_are_saturation(bundle, host, tmp_path):
    clipped = {DOWN2: lambda x: np.where(x > 80, 127, x)}
    report = compare_dump(bundle, write_dump(bundle, host, tmp_path, "vart", clipped))
    n = int((board_bytes(host[DOWN2]) > 80).sum())
    assert n > 0 and (report.first, report.cause.name) == (DOWN2, "saturation")
    assert report.cause.detail == f"{n} values are clipped at -128/127 in the dump where the bundle's are not"


def test_later_divergences_are_marked_after_the_first(bundle, host, tmp_path):
    faults = {SPATIAL: lambda x: rescale(x, 1), LATER_DOWN4: lambda x: x.transpose(0, 3, 1, 2)}
    report = compare_dump(bundle, write_dump(bundle, host, tmp_path, "vart", faults))
    rows = {r.key: r for r in report.rows}
    assert report.first == SPATIAL and rows[LATER_DOWN4].verdict == "after the first divergence"
    assert [r.key for r in report.rows if r.verdict == "first divergence"] == [SPATIAL]


def test_a_missing_file_is_named(bundle, host, tmp_path, capsys):
    dump = write_dump(bundle, host, tmp_path, "vart", skip={DOWN2})
    code, out, _ = run([bundle, dump, "--json"], capsys)
    report = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and report["missing"] == [DOWN2] and report["compared"] == 136


def test_table_output_names_the_divergence(bundle, host, tmp_path, capsys):
    code, out, _ = run([bundle, write_dump(bundle, host, tmp_path, "vart", {SPATIAL: lambda x: rescale(x, 1)})], capsys)
    assert code == 1
    expected = f"DIVERGES at {SPATIAL}: fix position differs: the dump matches the bundle's codes moved by +1 bit"
    assert expected in " ".join(out.split())


def test_diagnose_a_short_file_is_its_size():
    cause = diagnose(np.zeros(10, np.int8), np.zeros((1, 2, 2, 4), np.int8), 7, 1, lambda: None)
    assert (cause.name, cause.detail) == ("size", "the dump holds 10 values, the tensor 16 (1x2x2x4)")


def test_table_histogram_folds_signed_differences_into_octaves():
    assert octaves({-3: 1, 0: 5, 1: 2, -1: 1, 9: 4, 2: 1}) == {"0": 5, "1": 3, "2-3": 2, "8-15": 4}


# ---- bad input: exit 2, one line -------------------------------------------------------------------


def test_bad_input_is_one_line(bundle, host, tmp_path, capsys):
    onnx_bundle = tmp_path / "onnx-bundle"
    onnx_bundle.mkdir()
    (onnx_bundle / "manifest.json").write_text(json.dumps({"target": "onnx", "recipe": {"family": "onnx"}}))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    np.zeros(4, np.int8).tofile(stranger / "0.resnet50__conv1.bin")
    cases = [
        ([tmp_path / "nope", empty],
         f"bundle {tmp_path / 'nope'} is not a folder: give the folder vidconv-export --target dpu-<board> wrote"),
        ([onnx_bundle, empty], f"{onnx_bundle} is a bundle of target 'onnx' (onnx), not a DPU bundle: export one with "
                               f"vidconv-export --target dpu-kv260 (or another dpu-<board>)"),
        ([bundle, tmp_path / "none"],
         f"dump dir {tmp_path / 'none'} does not exist: give the folder the board's dump was copied to"),
        ([bundle, empty], f"{empty} holds no dumped tensor"),
        ([bundle, stranger], f"no file in {stranger} matches a tensor of {bundle} (dump names such as resnet50__conv1)"),
        ([bundle, stranger, "--tolerance", "-1"], "--tolerance -1: give a number of LSB >= 0"),
    ]
    for argv, message in cases:
        code, out, err = run(argv, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and out == "" and len(lines) == 1, (argv, err)
        assert lines[0].startswith(f"vidconv-compare: error: {message}"), lines[0]


def test_a_damaged_quant_info_is_one_line(bundle, host, tmp_path, capsys):
    dump = write_dump(bundle, host, tmp_path, "deploy_check")
    (tmp_path / "later" / "quant_info.json").write_text("{")
    code, _, err = run([bundle, dump], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"{tmp_path / 'later' / 'quant_info.json'} or {tmp_path / 'later' / 'names.json'} is not vai_q's" in err


def test_console_script_exit_codes(bundle, host, tmp_path):
    clean = subprocess.run([str(VIDCONV_COMPARE), str(bundle), str(bundle / "golden"), "--json"],
                           capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0, clean.stderr[-2000:]
    assert json.loads(clean.stdout.strip().splitlines()[-1])["ok"] is True
    missing = subprocess.run([str(VIDCONV_COMPARE), str(tmp_path / "x"), str(tmp_path)], capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
