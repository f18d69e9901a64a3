"""Golden vectors: the on-disk format (NHWC int8 bytes, index written last) and the LSB comparison."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vidconv_deploy.dpu.golden import (
    INDEX, TOLERANCE_LSB, GoldenTensor, compare_golden, read_golden, vart_file_name, write_golden,
)
from vidconv_deploy.errors import UserError


def tensors(seed: int = 0) -> list[GoldenTensor]:
    """Two frames of an early graph (input, a map, output) and a later graph ending in logits."""
    rng = np.random.default_rng(seed)

    def codes(*shape: int) -> np.ndarray:
        return rng.integers(-128, 128, size=shape, dtype=np.int8)

    out = []
    for frame in range(2):
        out += [
            GoldenTensor("frame_dequantized", codes(1, 3, 8, 6), 6, "early", frame, "input"),
            GoldenTensor("/stem/stem.0/Conv_output_0", codes(1, 4, 2, 3), 5, "early", frame),
            GoldenTensor("features", codes(1, 4, 2, 3), 4, "early", frame, "output"),
        ]
    out += [
        GoldenTensor("collage_dequantized", codes(1, 4, 2, 6), 4, "later", None, "input"),
        GoldenTensor("logits", codes(1, 5), 3, "later", None, "output"),
    ]
    return out


def test_round_trip_is_exact_and_files_are_raw_nhwc_int8(tmp_path):
    written = tensors()
    index_path = write_golden(tmp_path, written, meta={"clip": "synthetic"})
    index = json.loads(index_path.read_text())
    assert index["format"] == "vidconv-golden/1" and index["byte_order"] == "little"
    assert index["tolerance_lsb"] == TOLERANCE_LSB == 1 and "1182" in index["tolerance_source"]
    assert [len(index[s]) for s in ("input", "output", "tensors")] == [3, 3, 2]
    entry = index["tensors"][0]
    assert entry == {"name": "/stem/stem.0/Conv_output_0", "file": "early_0___stem_stem_0_Conv_output_0.bin",
                     "dtype": "int8", "shape": [1, 2, 3, 4], "layout": "NHWC", "fix_point": 5, "graph": "early", "frame": 0}
    # the bytes on disk are the NHWC tensor in C order, one signed byte per value (what xdputil dumps)
    raw = (tmp_path / entry["file"]).read_bytes()
    assert raw == written[1].values.transpose(0, 2, 3, 1).tobytes()
    assert raw[0] == written[1].values[0, 0, 0, 0].astype(np.uint8)
    assert index["output"][-1]["layout"] == "NC" and index["output"][-1]["shape"] == [1, 5]
    golden = read_golden(tmp_path)
    assert golden.meta == {"clip": "synthetic"}
    by_key = golden.by_key()
    for tensor in written:
        entry = by_key[tensor.key]
        assert (entry.role, entry.fix_point) == (tensor.role, tensor.fix_point)
        np.testing.assert_array_equal(golden.load(entry), tensor.values)
        np.testing.assert_array_equal(golden.load(entry, "NHWC"), np.fromfile(tmp_path / entry.file, np.int8).reshape(entry.shape))


def test_file_names_follow_vart_and_never_collide(tmp_path):
    assert vart_file_name("later/stage3.0/Add:0") == "later_stage3_0_Add_0.bin"
    a = GoldenTensor("x.y", np.zeros((1, 2), np.int8), 0, "g")
    b = GoldenTensor("x_y", np.ones((1, 2), np.int8), 0, "g")
    write_golden(tmp_path, [a, b])
    golden = read_golden(tmp_path)
    assert sorted(e.file for e in golden.entries) == ["g_x_y.bin", "g_x_y_1.bin"]
    np.testing.assert_array_equal(golden.load(golden.by_key()["g/x_y"]), b.values)


def test_index_is_written_last_and_a_failed_write_leaves_none(tmp_path):
    write_golden(tmp_path, tensors())
    bad = [*tensors(), GoldenTensor("wide", np.zeros((1, 2), np.int16), 0, "later")]
    with pytest.raises(ValueError, match="wide: golden tensors are int8, got int16"):
        write_golden(tmp_path, bad)
    assert not (tmp_path / INDEX).exists()  # the old index must not vouch for half-rewritten files
    with pytest.raises(UserError, match="has no index.json: it is not a complete golden dir"):
        read_golden(tmp_path)


def test_compare_flags_tensors_over_tolerance(tmp_path):
    written = tensors()
    write_golden(tmp_path, written)
    seen = [GoldenTensor(t.name, t.values.copy(), t.fix_point, t.graph, t.frame, t.role) for t in written]
    over = seen[1].values  # early[0] map: one element 3 LSB off, one 1 LSB off
    over[0, 0, 0, 0] = np.clip(int(over[0, 0, 0, 0]) + (3 if over[0, 0, 0, 0] < 100 else -3), -128, 127)
    over[0, 1, 0, 0] = over[0, 1, 0, 0] + (1 if over[0, 1, 0, 0] < 127 else -1)
    within = seen[4].values  # early[1] map: one element 1 LSB off
    within[0, 3, 1, 2] = within[0, 3, 1, 2] + (1 if within[0, 3, 1, 2] < 127 else -1)
    seen[7] = GoldenTensor("logits", seen[7].values, 2, "later", None, "output")  # another fix point
    seen[6] = GoldenTensor("collage_dequantized", seen[6].values[:, :, :, :3], 4, "later", None, "input")  # another shape
    seen.append(GoldenTensor("extra", np.zeros((1, 2), np.int8), 0, "later"))
    del seen[5]  # early[1] output not compared
    report = compare_golden(tmp_path, seen)
    rows = {r.key: r for r in report.rows}
    assert (rows["early[0]/frame_dequantized"].status, rows["early[0]/frame_dequantized"].max_lsb) == ("exact", 0)
    r = rows["early[0]//stem/stem.0/Conv_output_0"]
    assert (r.status, r.max_lsb, r.within, r.over, r.ok) == ("over", 3, 1, 1, False)
    r = rows["early[1]//stem/stem.0/Conv_output_0"]
    assert (r.status, r.max_lsb, r.within, r.over, r.ok) == ("within", 1, 1, 0, True)
    assert rows["later/logits"].status == "fix_point" and rows["later/collage_dequantized"].status == "shape"
    assert rows["later/extra"].status == "no golden"
    assert report.unseen == ("early[1]/features",) and not report.ok
    assert compare_golden(tmp_path, seen[:5], tolerance_lsb=3).rows[1].status == "within"
    assert compare_golden(tmp_path, [written[0], written[3]]).ok
    assert report.to_dict()["tensors"][1]["status"] == "over"


def test_damaged_golden_files_are_named(tmp_path):
    written = tensors()
    write_golden(tmp_path, written)
    golden = read_golden(tmp_path)
    entry = golden.by_key()["later/logits"]
    (tmp_path / entry.file).write_bytes(b"\x01\x02")
    with pytest.raises(UserError, match=r"has 2 bytes, the index says shape \[1, 5\]"):
        golden.load(entry)
    (tmp_path / INDEX).write_text('{"format": "other"}')
    with pytest.raises(UserError, match="has format 'other', not 'vidconv-golden/1'"):
        read_golden(tmp_path)
