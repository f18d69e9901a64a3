"""The compiled calibration kernel (fixpoint/native.py, diffs_kernel.c) computes what the torch code computes.

The search's choice and the half-up fake quantization must be the torch path's exactly, since fix
positions and quantized activations are the calibration's result; the errors themselves are float32
block sums added in float64, close to torch's float32 sums, and near ties are handed back to those.
"""

from __future__ import annotations

import pytest
import torch

from vidconv_deploy.fixpoint import arithmetic as fx
from vidconv_deploy.fixpoint import native

from test_fixpoint import _source_diffs_fix_pos, _values_with_ties


@pytest.fixture(scope="module")
def compiled() -> native.Kernel:
    found = native.kernel()
    assert found is not None, "no C compiler: the calibration falls back to torch"
    return found


def _torch_search(x: torch.Tensor, monkeypatch) -> fx.DiffsSearch:
    with monkeypatch.context() as m:
        m.setattr(fx, "kernel", lambda: None)
        return fx.diffs_search(x)


def test_half_up_fake_quantization_is_the_torch_one_bit_for_bit(compiled):
    # ties either way, values one float below a tie, saturation at both ends, zeros; and a strided view
    x = _values_with_ties()
    for pos in range(-2, 14):
        scale = 2.0**pos
        expected = fx.round_float(x * scale, "half_up").clamp_(fx.QMIN, fx.QMAX).mul_(1.0 / scale)
        assert torch.equal(compiled.fake_quantize_half_up(x, pos), expected), pos
    grid = x[:20000].reshape(100, 200)[:, ::3]
    assert torch.equal(fx.fake_quantize(grid, 5, "half_up"), fx.round_float(grid * 32.0, "half_up").clamp_(-128, 127) / 32.0)


def test_errors_are_the_float32_sums_to_float32_accuracy(compiled):
    x = _values_with_ties()
    errors = compiled.diffs_errors(x, 2, 8)
    for k, error in enumerate(errors):
        pos = 2 + k
        assert error * 4.0**-pos == pytest.approx(fx.measure(x, pos).error, rel=1e-5), pos
    with pytest.raises(ValueError, match="scope 17 outside 1..16"):
        compiled.diffs_errors(x, 2, 17)


def test_errors_are_within_the_documented_bound_of_exact_sums(compiled):
    # Many blocks (2048 values each) and a tail: every candidate within 8e-6 of the float64 sum (diffs_kernel.c).
    x = torch.randn(5 * 2048 + 77, generator=torch.Generator().manual_seed(3)) * 3
    for k, error in enumerate(compiled.diffs_errors(x, 1, 6)):
        t = x.to(torch.float64) * 2.0 ** (1 + k)
        exact = float(((t - torch.round(t).clamp(-128, 127)) ** 2).sum())
        assert error == pytest.approx(exact, rel=8e-6), k


@pytest.mark.parametrize("seed", range(40))
def test_compiled_search_chooses_as_the_torch_search(compiled, monkeypatch, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(30000, generator=gen) * 2.0 ** (seed % 7 - 3)
    if seed % 4 == 1:
        x = x**3
    elif seed % 4 == 2:
        x = torch.cat([torch.relu(x) * 7, _values_with_ties()])
    elif seed % 4 == 3:
        x[0] = 40.0
    assert fx.diffs_search(x).position == _torch_search(x, monkeypatch).position == _source_diffs_fix_pos(x)


def test_near_ties_are_decided_by_the_float32_sums(compiled, monkeypatch):
    # A kernel that reports the first two candidates 5e-5 apart (inside NEAR_TIE) and the rest far off: the
    # search must re-sum exactly those two the torch way and take the smaller float32 sum.
    x = torch.randn(5000, generator=torch.Generator().manual_seed(7))
    start = fx.diffs_search(x, 1).position
    truth = [fx.measure(x, start + k).error for k in range(2)]

    class NearTie:
        def diffs_errors(self, values, first, scope):
            return [4.0**first, 4.0 ** (first + 1) * (1 + 5e-5), *(4.0 ** (first + k) * 9 for k in range(2, scope))]

    monkeypatch.setattr(fx, "kernel", NearTie)
    search = fx.diffs_search(x)
    assert sorted(search.measured) == [start, start + 1]
    assert search.position == start + truth.index(min(truth))


def test_the_library_is_built_once_per_key_and_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDCONV_KERNEL_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_loaded", {})
    first = native.kernel()
    assert first is not None and first.path.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temporary left behind
    monkeypatch.setattr(native, "_loaded", {})
    assert native.kernel().path == first.path
    monkeypatch.setenv("VIDCONV_NATIVE", "0")
    assert native.kernel() is None
    monkeypatch.setenv("VIDCONV_NATIVE", "1")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(native, "_loaded", {})
    assert native.kernel() is None  # the calibration then runs the torch path


def test_a_tensor_off_the_cpu_stays_on_torch(compiled):
    # DPU QAT on CUDA fake-quantizes GPU tensors: the kernel reads host memory, so it must not get them
    # (the meta device stands in for a GPU here: any data pointer there is not host memory)
    x = torch.empty(64, device="meta")
    out = fx.fake_quantize(x, 3, "half_up")
    assert out.device.type == "meta" and out.shape == x.shape
