"""vai_q_pytorch's fixed-point rules, checked against numbers worked out by hand from its source.

VAI = Xilinx/Vitis-AI src/vai_quantizer/vai_q_pytorch (Vitis AI 3.5).
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from vidconv_deploy.fixpoint import arithmetic as fx


def rounded(values, mode):
    return fx.round_float(torch.tensor(values, dtype=torch.float64), mode).tolist()


def test_half_up_is_dpu_round():
    # VAI/include/cpu/nndct_fix_kernels_cpu.h, method 2: (x < 0 && x - floor(x) == 0.5) ? ceil(x) : round(x)
    # -2.5 -> ceil = -2; 2.5 -> round = 3; -0.5 -> ceil = 0; -1.5 -> -1; -2.6 -> round = -3; 1.4999 -> 1
    assert rounded([-2.5, 2.5, -0.5, 0.5, -1.5, -2.6, 1.4999], "half_up") == [-2, 3, 0, 1, -1, -3, 1]


def test_std_round_is_c_round():
    # method 3 = C round(): halves away from zero: -2.5 -> -3, 2.5 -> 3, -0.5 -> -1
    assert rounded([-2.5, 2.5, -0.5, 0.5, 1.4999, -1.4999], "std_round") == [-3, 3, -1, 1, 1, -1]
    # C round(0.49999997f) is 0; floor(x + 0.5) in float32 gives 1 (x + 0.5 rounds up to 1.0)
    assert fx.round_float(torch.tensor([0.49999997], dtype=torch.float32), "std_round").item() == 0.0


def test_half_even_is_onnx_quantize_linear():
    assert rounded([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5], "half_even") == [0, 2, 2, 0, -2, -2, 4]


@pytest.mark.parametrize("mode", fx.ROUNDING_MODES)
def test_integer_shift_round_matches_float_rounding(mode):
    acc = torch.arange(-1024, 1025, dtype=torch.int64)
    for shift in range(1, 6):
        expected = fx.round_float(acc.to(torch.float64) / 2**shift, mode).to(torch.int64)
        assert torch.equal(fx.shift_round(acc, shift, mode), expected), (mode, shift)
    assert torch.equal(fx.shift_round(acc, -3, mode), acc * 8)


def test_diffs_overflow_position():
    # fix_ops.diffs_fix_pos: step = max(x_min / -128.5, x_max / 127.5)
    # [0, 1]: step = 1 / 127.5, floor(log2(127.5)) = 6; at 6, 1.0 -> 64 exactly (error 0): keeps 6
    assert fx.diffs_fix_pos(torch.tensor([0.0, 1.0])) == 6
    # [-1]: step = 1 / 128.5, floor(log2(128.5)) = 7; -1 -> -128 exactly
    assert fx.diffs_fix_pos(torch.tensor([-1.0])) == 7
    # all zeros: step 0 -> 18 (then capped to 12 by calibrate_int)
    assert fx.diffs_fix_pos(torch.zeros(4)) == 18
    assert fx.capped(fx.diffs_fix_pos(torch.zeros(4))) == 12
    # 1e-5: floor(log2(127.5 / 1e-5)) = 23 -> capped to 12 (nndct_max_fix_position default 12)
    assert fx.capped(fx.diffs_fix_pos(torch.tensor([1e-5]))) == 12


def test_diffs_search_prefers_least_squared_error():
    # x = [1.0] + 1000 * [0.01]; overflow position 6. Sum of squared errors (half_up):
    #   fp 6: 0.01 -> 1/64, 1000 * 0.005625**2 = 0.0316
    #   fp 7: 1.0 -> 127/128 (error 1/128), 0.01 -> 1/128: 1/128**2 + 1000 * 0.0021875**2 = 0.00485
    #   fp 8: 1.0 -> 127/256, error 0.254: worse
    x = torch.tensor([1.0] + [0.01] * 1000)
    assert fx.diffs_fix_pos(x, scope=fx.DIFFS_SCOPE) == 7
    # graph inputs use scope 1 (calibrate_int): no search, the overflow position
    assert fx.diffs_fix_pos(x, scope=fx.INPUT_SCOPE) == 6


def _source_fake_quantize(x: torch.Tensor, pos: int, mode: str) -> torch.Tensor:
    """vai_q's fake quantization written out as the source does it: floor and fraction, clamp, scale back."""
    scaled = x * 2.0**pos
    floor = torch.floor(scaled)
    frac = scaled - floor
    if mode == "half_up":
        q = floor + (frac >= 0.5).to(x.dtype)
    elif mode == "std_round":
        trunc = torch.trunc(scaled)
        q = trunc + torch.sign(scaled) * ((scaled - trunc).abs() >= 0.5).to(x.dtype)
    else:
        q = torch.round(scaled)
    return q.clamp(-128, 127) / 2.0**pos


def _values_with_ties() -> torch.Tensor:
    """Gaussian values plus exact ties at positions 4..8 (k + 0.5 LSB), saturating ones and zeros."""
    gen = torch.Generator().manual_seed(3)
    ties = [(torch.randint(-300, 300, (500,), generator=gen) + 0.5) / 2.0**p for p in range(4, 9)]
    return torch.cat([torch.randn(20000, generator=gen) * 2, *ties, torch.tensor([127.5 / 16, -128.5 / 16, 0.0, 0.49999997])])


@pytest.mark.parametrize("mode", fx.ROUNDING_MODES)
def test_round_float_equals_the_source_rounding_on_ties_and_near_ties(mode):
    x = _values_with_ties()
    for pos in range(2, 10):
        assert torch.equal(fx.fake_quantize(x, pos, mode), _source_fake_quantize(x, pos, mode)), (mode, pos)


def test_squared_errors_are_the_sources_float32_sums_bit_for_bit():
    # The shortcut (half-to-even rounding, error measured at the scaled magnitude) must give the same
    # float32 sums as sum((x - fake_quantize(x))**2) with vai_q's half-up rounding, so near-ties choose alike.
    x = _values_with_ties()
    positions = range(2, 10)
    source = [torch.sum(torch.pow(x - _source_fake_quantize(x, p, "half_up"), 2.0)).item() for p in positions]
    assert [fx.squared_error(x, p) for p in positions] == source


def _source_diffs_fix_pos(x: torch.Tensor) -> int:
    """fix_ops.diffs_fix_pos as written: every one of the 5 candidates summed in full."""
    step = max(x.min().item() / -128.5, x.max().item() / 127.5)
    start = int(torch.floor(torch.log2(torch.tensor(1.0 / step, dtype=torch.float32))).item())
    errors = [torch.sum(torch.pow(x - _source_fake_quantize(x, p, "half_up"), 2.0)).item() for p in range(start, start + 5)]
    return start + errors.index(min(errors))


@pytest.mark.parametrize("seed", range(40))
def test_diffs_search_chooses_as_the_full_search(seed):
    # Skipping candidates by their saturation bound must never change the choice: heavy and light tails,
    # a lone outlier, ReLU-like halves, ties, and values spread so the best position is 0 to 4 above the start.
    gen = torch.Generator().manual_seed(seed)
    kind = seed % 5
    x = torch.randn(50000, generator=gen)
    if kind == 1:
        x = x ** 3
    elif kind == 2:
        x[0] = 40.0
    elif kind == 3:
        x = torch.relu(x) * 7
    elif kind == 4:
        x = torch.cat([x * 0.01, _values_with_ties()])
    x = x * 2.0 ** (seed % 7 - 3)
    assert fx.diffs_fix_pos(x) == _source_diffs_fix_pos(x)


def test_mode_over_batches_takes_the_smallest_most_frequent():
    # calibrate_int: bnfp[1] = scipy.stats.mode(history)[0][0]: the smallest of the most common
    assert fx.modal_fix_pos([5, 6, 6, 5, 7]) == 5
    assert fx.modal_fix_pos([7, 6, 6]) == 6
    assert fx.modal_fix_pos([9]) == 9


def test_quantize_saturates_without_narrow_range():
    # fake_quantize_per_tensor(x, 2**fp, 0, -128, 127): [-128, 127], not [-127, 127]
    codes = fx.quantize_int(torch.tensor([-3.0, -1.0, 0.99, 3.0]), 7, "half_up")
    assert codes.tolist() == [-128, -128, 127, 127]


def positions(i, w, o, b=None):
    return fx.shift_cut_bias(fx.ConvPositions(input=i, weight=w, output=o, bias=b))


def test_shift_rules_leave_legal_positions_alone():
    p = positions(5, 7, 6, 8)  # shift_cut 6 in [0, 16]; shift_bias 4 in [min(0, -(24 - 14)), 16]
    assert (p.input, p.weight, p.output, p.bias, p.notes) == (5, 7, 6, 8, [])


def test_shift_cut_below_zero_lowers_the_output_position():
    # fix_pos_adjust.shift_cut_bias: shift_cut = 4 + 3 - 9 = -2 < 0 -> output 9 + (-2) = 7
    p = positions(3, 4, 9, 5)
    assert (p.output, p.weight, p.bias) == (7, 4, 5)
    assert p.shift_cut == 0


def test_shift_cut_above_16_lowers_the_weight_position():
    # shift_cut = 12 + 8 - 2 = 18 > 16 -> weight 12 - 18 + 16 = 10
    # bias: shift_bias = 10 + 8 - 12 = 6; lower bound min(0, -(24 - (8 + 18))) = 0 (stale shift_cut): ok
    p = positions(8, 12, 2, 12)
    assert (p.output, p.weight, p.bias) == (2, 10, 12)


def test_shift_bias_below_its_bound_lowers_the_bias_position():
    # shift_cut = 8 + 4 - 10 = 2; bound min(0, -(24 - 10)) = -14; shift_bias = 12 - 30 = -18 < -14
    # -> bias 30 + (-18) - (-14) = 26
    p = positions(4, 8, 10, 30)
    assert (p.bias, p.shift_bias) == (26, -14)


def test_shift_bias_above_16_lowers_the_weight_position():
    # shift_cut = 12 + 10 - 12 = 10; shift_bias = 22 - 2 = 20 > 16 -> weight 12 - 20 + 16 = 8
    p = positions(10, 12, 12, 2)
    assert (p.weight, p.shift_bias, p.shift_cut) == (8, 16, 6)


def test_shift_bias_bound_uses_shift_cut_before_its_fixup():
    # shift_cut = 3 + 2 - 12 = -7 -> output 5. The source computes the bias bound with the stale -7:
    # min(0, -(24 - (8 - 7))) = -23; shift_bias = 3 + 2 - 27 = -22 >= -23: bias stays 27.
    # (With the corrected shift_cut 0 the bound would be -16 and the bias would move.)
    p = positions(2, 3, 12, 27)
    assert (p.output, p.bias) == (5, 27)


@pytest.mark.parametrize(
    ("kernel", "factor"),
    [
        # dpu_utils.get_avgpool_dpu_coeff table: average * scale = sum * scale / count
        ((3, 3), Fraction(7, 64)),  # 9 * 7 / 64 / 9
        ((5, 5), Fraction(10, 256)),  # 25 * 10 / 256 / 25
        ((6, 6), Fraction(7, 256)),  # 36 * 7 / 256 / 36
        ((3, 6), Fraction(7, 128)),  # 36 * 7 / 256 / 18: the table scale applies to 3x6 as well
        ((7, 7), Fraction(21, 1024)),
        ((14, 14), Fraction(21, 4096)),
        # generic search over shifts 0 .. ceil(log2(count * 128)) - 1 of round(2**s / count) / 2**s:
        ((2, 2), Fraction(1, 4)),  # s = 2: round(4 / 4) = 1, exact
        ((9, 9), Fraction(101, 8192)),  # s = 13: round(8192 / 81 = 101.14) = 101, |101/8192 - 1/81| = 1.7e-5
    ],
)
def test_avgpool_divisor(kernel, factor):
    assert fx.avgpool_sum_factor(kernel) == factor


def test_mean_divisor_has_no_table():
    # mean.py: calculate_op_scale only when count is not a power of two, and without the table:
    # count 9: s = 9 gives round(512 / 9 = 56.9) = 57 (error 2.2e-4), better than 7/64 (error 1.7e-3)
    assert fx.mean_sum_factor(9) == Fraction(57, 512)
    assert fx.avgpool_sum_factor((3, 3)) == Fraction(7, 64)
    # count 49: 21/1024 first reached at s = 10 (42/2048, 84/4096 tie, not strictly better)
    assert fx.mean_sum_factor(49) == Fraction(21, 1024)
    assert fx.mean_sum_factor(64) == Fraction(1, 64)


def test_dyadic_fraction_as_int_and_exponent():
    assert fx.fraction_to_int_exp(Fraction(21, 1024)) == (21, 10)
    with pytest.raises(ValueError):
        fx.fraction_to_int_exp(Fraction(1, 3))


def test_quantizing_from_the_searchs_codes_equals_fake_quantize():
    # The search keeps the half-to-even codes it measured; half-up quantization rebuilt from them must be
    # fake_quantize's, bit for bit, on ties (either way), saturation at both ends, and every measured position.
    x = _values_with_ties()
    for pos in range(3, 10):
        search = fx.DiffsSearch(pos, {pos: fx.measure(x, pos)})
        assert torch.equal(search.fake_quantize(x, pos, "half_up"), fx.fake_quantize(x, pos, "half_up")), pos
        assert torch.equal(search.fake_quantize(x, pos + 1, "half_up"), fx.fake_quantize(x, pos + 1, "half_up"))
