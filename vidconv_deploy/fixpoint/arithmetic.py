"""Fixed-point arithmetic of the Vitis AI quantizer (vai_q_pytorch) for the DPU.

A tensor is stored as int8 ``q`` with a "fix position" ``fp``: value = q * 2**-fp. Everything here
reproduces what vai_q_pytorch (Vitis AI 3.5, ``src/vai_quantizer/vai_q_pytorch`` in Xilinx/Vitis-AI,
below ``VAI/``) computes, and each function names the file that states the rule:

- rounding: ``VAI/include/cpu/nndct_fix_kernels_cpu.h`` (``_vai_round_cpu``, methods 2, 3, 8);
- fix-position search: ``VAI/pytorch_binding/pytorch_nndct/nn/modules/fix_ops.py``
  (``diffs_fix_pos``) called from ``VAI/pytorch_binding/pytorch_nndct/quantization/torchquantizer.py``
  (``TORCHQuantizer.calibrate_int``: method, scope, cap at 12, mode over batches);
- shift rules: ``VAI/nndct_shared/quantization/fix_pos_adjust.py`` (``FixPosChecker.shift_cut_bias``);
- average-pool divisor: ``VAI/nndct_shared/utils/dpu_utils.py`` (``get_avgpool_dpu_coeff``,
  ``calculate_op_scale``), used by ``VAI/pytorch_binding/pytorch_nndct/nn/modules/avgpool.py``,
  ``adaptive_avg_pool.py`` and ``mean.py``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from vidconv_deploy.fixpoint.native import MAX_SCOPE, kernel

BIT_WIDTH = 8
QMIN, QMAX = -(1 << (BIT_WIDTH - 1)), (1 << (BIT_WIDTH - 1)) - 1
#: ``nndct_max_fix_position`` default 12 (``VAI/nndct_shared/utils/option_list.py``); calibrate_int caps every
#: position of a tensor with bit width <= 8 at it.
MAX_FIX_POS = 12
#: calibrate_int: ``scope = 5 if nndct_diffs_mode == "mse" else 1`` and the option defaults to "mse"
#: (option_list.py); graph inputs (INPUT / QUANT_STUB nodes) always get scope 1.
DIFFS_SCOPE = 5
INPUT_SCOPE = 1
#: ``diffs_fix_pos``: a tensor whose step is 0 (all zeros) gets position 18 (then capped to 12).
ZERO_TENSOR_FIX_POS = 18
#: FixPosChecker.shift_cut_bias bounds (DPU target; FLEXML differs).
SHIFT_CUT_MIN, SHIFT_CUT_MAX, SHIFT_BIAS_MAX = 0, 16, 16

#: Rounding modes by vai_q method number (``_vai_round_cpu``): 2 = "half_up" (activations and inputs on
#: the DPU, ``(x < 0 && x - floor(x) == 0.5) ? ceil(x) : round(x)``), 3 = "std_round" (C ``round``: half away
#: from zero; weights and bias), 8 = "half_even" (what ONNX QuantizeLinear does).
ROUNDING_MODES = ("half_up", "std_round", "half_even")
#: calibrate_int picks ``mth = 3`` for tensor_type 'param' and ``mth = 2`` otherwise (DPU target).
PARAM_ROUNDING, ACTIVATION_ROUNDING = "std_round", "half_up"


def round_float(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Round a float tensor to integral values with one of :data:`ROUNDING_MODES`.

    Built on ``torch.round`` (half to even, exact) and a fix of the ties from ``d = x - r``, which is exact
    (r and x are within 0.5 of each other): ``floor(2 * d)`` is 1 exactly on a tie rounded down and
    <= 0 elsewhere. This avoids ``floor(x + 0.5)``, which rounds 0.49999997 up in float32 where C's
    ``round`` does not, and boolean masks, which cost several float passes each in torch.
    """
    r = torch.round(x)
    if mode == "half_even":
        return r
    if mode == "half_up":  # ties toward +inf: the source's ceil for negative ties, round() otherwise
        return r.add_((x - r).mul_(2.0).floor_().clamp_(min=0.0))
    if mode == "std_round":  # ties away from zero
        tie = (r - x).abs_() == 0.5
        return torch.where(tie, x + 0.5 * torch.sign(x), r)
    raise ValueError(f"unknown rounding mode {mode!r}; expected one of {ROUNDING_MODES}")


def quantize_int(x: torch.Tensor, fix_pos: int, mode: str) -> torch.Tensor:
    """The int8 codes of ``x`` at ``fix_pos`` (``_fix_neuron_v2_cpu``: scale, round, clamp), as an int8 tensor."""
    scaled = x.to(torch.float64) * (2.0**fix_pos)  # power-of-two scaling is exact in float64 for float32 x
    return round_float(scaled, mode).clamp(QMIN, QMAX).to(torch.int8)


def fake_quantize(x: torch.Tensor, fix_pos: int, mode: str) -> torch.Tensor:
    """``x`` quantized to int8 at ``fix_pos`` and back, in x's dtype (``fake_quantize_per_tensor``).

    Half-up on a float32 CPU tensor outside autograd (every activation of the calibration) runs in the
    compiled kernel (:mod:`~vidconv_deploy.fixpoint.native`) in one pass, with the same result; a GPU
    tensor (DPU QAT on CUDA) stays on torch."""
    on_cpu = x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad
    native = kernel() if mode == "half_up" and on_cpu else None
    if native is not None:
        return native.fake_quantize_half_up(x, fix_pos).view(x.shape)
    scale = 2.0**fix_pos
    return round_float(x * scale, mode).clamp_(QMIN, QMAX).mul_(1.0 / scale)


#: A candidate is skipped when a lower bound of its error exceeds the best full error by this factor: far
#: above the relative error of a float32 cascade sum, so a skipped candidate could never have been chosen.
PRUNE_MARGIN = 1e-3
#: The saturation bound sums every SATURATION_STRIDE-th value (a subset's error is a lower bound too).
SATURATION_STRIDE = 8
#: The compiled search's errors are within 8e-6 of exact (float32 block sums added in float64, see
#: diffs_kernel.c); candidates within this relative distance of the least error are summed again as the
#: source sums them (float32 torch.sum, whose relative error is below 1e-5 at these sizes) to choose between
#: them, so the choice is the torch search's.
NEAR_TIE = 1e-4


def diffs_fix_pos(x: torch.Tensor, scope: int = DIFFS_SCOPE) -> int:
    """One tensor's fix position by vai_q's "diffs" search (``fix_ops.diffs_fix_pos``), uncapped."""
    return diffs_search(x, scope).position


@dataclass
class Candidate:
    """A position the diffs search summed in full: the half-to-even codes (clamped), ``t - codes`` for
    ``t = x * 2**pos``, and the squared error (see :func:`squared_error`)."""

    codes: torch.Tensor
    residual: torch.Tensor
    error: float


@dataclass
class DiffsSearch:
    """The diffs search's choice and what it measured, so that quantizing at a measured position reuses it."""

    position: int
    measured: dict[int, Candidate] = field(default_factory=dict)

    def fake_quantize(self, x: torch.Tensor, pos: int, mode: str) -> torch.Tensor:
        """:func:`fake_quantize` of ``x`` (the searched tensor), from the search's codes when it measured ``pos``.

        Half-up differs from the search's half-to-even codes only on ties taken down, where the residual is
        exactly +0.5 (it is above 0.5 only where the top saturates, and adding 1 there is clamped away):
        ``clamp(codes + clamp(floor(2 * residual), 0, 1))``, equal to rounding ``t`` half up and clamping.
        """
        found = self.measured.get(pos)
        if found is None or mode != "half_up":
            return fake_quantize(x, pos, mode)
        up = (found.residual * 2.0).floor_().clamp_(0.0, 1.0)
        return up.add_(found.codes).clamp_(QMIN, QMAX).mul_(2.0**-pos)


def diffs_search(x: torch.Tensor, scope: int = DIFFS_SCOPE) -> DiffsSearch:
    """vai_q's "diffs" search (``fix_ops.diffs_fix_pos``), uncapped, keeping what it measured.

    ``step = max(x_min / (-2**(bw-1) - 0.5), x_max / (2**(bw-1) - 0.5))``; the largest position that does
    not overflow is ``floor(log2(1 / step))``; the search then tries ``scope`` positions from there upward
    and keeps the one with the least sum of squared errors (the first on a tie; :func:`squared_error`).

    Each position up costs saturation error on the largest values, and that part, summed over a subset
    of the values, is a lower bound of the position's error (:func:`saturation_bound`). A position whose
    bound exceeds the best error so far (by :data:`PRUNE_MARGIN`) is not summed in full; the bound grows
    with the position, so the search stops there. The choice is the full search's.
    """
    x = x.detach().to(torch.float32)
    abs_max = 1 << (BIT_WIDTH - 1)
    low, high = torch.aminmax(x)
    step = torch.max(low / (-abs_max - 0.5), high / (abs_max - 0.5))
    if not step.item() > 0.0:  # the source compares with sys.float_info.min, below every float32 > 0
        return DiffsSearch(ZERO_TENSOR_FIX_POS)
    start = int(torch.floor(torch.log2(1.0 / step)).item())
    if scope == 1:
        return DiffsSearch(start)
    native = kernel() if x.device.type == "cpu" else None
    if native is not None and scope <= MAX_SCOPE:
        return _compiled_search(native, x, start, scope)
    peak = max(-low.item(), high.item())
    search = DiffsSearch(start, {start: measure(x, start)})
    for pos in range(start + 1, start + scope):
        best_error = search.measured[search.position].error
        if saturation_bound(x, peak, pos) > best_error * (1 + PRUNE_MARGIN):
            break
        search.measured[pos] = measure(x, pos)
        if search.measured[pos].error < best_error:
            search.position = pos
    return search


def _compiled_search(native, x: torch.Tensor, start: int, scope: int) -> DiffsSearch:
    """Every candidate's error in one pass of the compiled kernel (float32 block sums in float64); near ties (:data:`NEAR_TIE`)
    are decided by :func:`measure`'s float32 sums, first position first, as :func:`diffs_search` decides.
    A candidate further than that from the least error has a larger float32 sum too, so it is never the choice."""
    errors = [e * 4.0 ** -(start + k) for k, e in enumerate(native.diffs_errors(x, start, scope))]
    least = min(errors)
    near = [start + k for k, e in enumerate(errors) if e <= least * (1 + NEAR_TIE)]
    if len(near) == 1:
        return DiffsSearch(near[0])
    search = DiffsSearch(near[0], {pos: measure(x, pos) for pos in near})
    for pos in near[1:]:
        if search.measured[pos].error < search.measured[search.position].error:
            search.position = pos
    return search


def measure(x: torch.Tensor, pos: int) -> Candidate:
    """The codes of ``x`` at ``pos`` and ``sum((x - fake_quantize(x, pos))**2)`` as the source computes it
    in float32 (one torch.sum).

    Two exact shortcuts make it cheaper without changing the float32 sum. The error does not depend on
    the rounding mode: the modes differ only on ties, where ``|x - q|`` is half an LSB either way (with or
    without saturation), so half-to-even ``torch.round`` serves every mode. And with ``t = x * 2**pos``
    (exact), ``x - q = (t - clamp(round(t))) * 2**-pos`` exactly, so each squared term and every partial sum
    of the reduction is the source's times ``2**(2 * pos)``, exactly, and scales back exactly.
    """
    t = x * 2.0**pos
    codes = torch.round(t).clamp_(QMIN, QMAX)
    residual = t.sub_(codes)
    return Candidate(codes, residual, torch.sum(residual * residual).item() * 4.0**-pos)


def squared_error(x: torch.Tensor, pos: int) -> float:
    """``sum((x - fake_quantize(x, pos))**2)`` as the source computes it in float32 (see :func:`measure`)."""
    return measure(x, pos).error


def saturation_bound(x: torch.Tensor, peak: float, pos: int) -> float:
    """A lower bound of :func:`squared_error` at ``pos`` from saturation alone: every value beyond 128 LSB
    is at least ``|t| - 128`` LSB from its code, so the sum of those excesses over a strided subset of the
    values (in float64), or over the peak value alone, cannot exceed the full error."""
    t = x.reshape(-1)[::SATURATION_STRIDE].to(torch.float64).abs_().mul_(2.0**pos)
    over = t.sub_(-QMIN).clamp_(min=0.0)
    subset = float(torch.sum(over.mul_(over)))
    single = max(peak * 2.0**pos + QMIN, 0.0) ** 2
    return max(subset, single) * 4.0**-pos


def capped(fix_pos: int) -> int:
    """calibrate_int: ``bnfp[1] = min(max_fp, bnfp[1])`` for bit widths <= 8."""
    return min(MAX_FIX_POS, fix_pos)


def modal_fix_pos(history: Iterable[int]) -> int:
    """The activation position over calibration batches: calibrate_int takes ``scipy.stats.mode`` of the
    per-batch positions, which returns the smallest of the most frequent values."""
    return modal_of_counts(Counter(history))


def modal_of_counts(counts: Counter[int]) -> int:
    """:func:`modal_fix_pos` of a history given as position counts (kept up to date batch by batch)."""
    if not counts:
        raise ValueError("no calibration history")
    top = max(counts.values())
    return min(v for v, c in counts.items() if c == top)


def shift_round(acc: torch.Tensor, shift: int, mode: str) -> torch.Tensor:
    """``acc * 2**-shift`` rounded to an integer, on int64 tensors (a requantization by ``shift`` bits).

    ``shift <= 0`` is an exact left shift. For ``shift > 0``: "half_up" is the DPU's
    ``(acc + 2**(shift-1)) >> shift``; "half_even" breaks ties to the even result as ONNX QuantizeLinear
    does; "std_round" breaks them away from zero.
    """
    if shift <= 0:
        return acc << (-shift)
    half = 1 << (shift - 1)
    if mode == "half_up":
        return (acc + half) >> shift
    floor = acc >> shift
    rest = acc - (floor << shift)  # in [0, 2**shift)
    up = rest > half
    if mode == "half_even":
        up |= (rest == half) & ((floor & 1) == 1)
    elif mode == "std_round":
        up |= (rest == half) & (acc >= 0)
    else:
        raise ValueError(f"unknown rounding mode {mode!r}; expected one of {ROUNDING_MODES}")
    return floor + up.to(acc.dtype)


def saturate(acc: torch.Tensor) -> torch.Tensor:
    """Clamp to the int8 range (the DPU saturates, it does not wrap)."""
    return acc.clamp(QMIN, QMAX)


@dataclass
class ConvPositions:
    """The four positions a conv-like op's requantization depends on (``bias`` None without a bias)."""

    input: int
    weight: int
    output: int
    bias: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def shift_cut(self) -> int:
        return self.weight + self.input - self.output

    @property
    def shift_bias(self) -> int | None:
        return None if self.bias is None else self.weight + self.input - self.bias


def shift_cut_bias(pos: ConvPositions) -> ConvPositions:
    """vai_q's fix-up of a conv's positions so the DPU's shifts fit its hardware (FixPosChecker.shift_cut_bias).

    shift_cut = fp_w + fp_in - fp_out must lie in [0, 16]: below, the output position drops to
    fp_w + fp_in; above, the weight position drops to fp_out - fp_in + 16. Then
    shift_bias = fp_w + fp_in - fp_b must lie in [min(0, -(24 - (8 + shift_cut))), 16]: below, the bias
    position drops; above, the weight position drops. As in the source, the lower bias bound uses the
    shift_cut from *before* its fix-up, and nothing is re-checked after the weight moves for the bias.
    Returns a new ConvPositions whose ``notes`` say what moved.
    """
    new = ConvPositions(pos.input, pos.weight, pos.output, pos.bias, list(pos.notes))
    shift_cut = new.shift_cut
    if shift_cut < SHIFT_CUT_MIN:
        new.notes.append(f"shift_cut {shift_cut} < {SHIFT_CUT_MIN}: output {new.output} -> {new.output + shift_cut - SHIFT_CUT_MIN}")
        new.output += shift_cut - SHIFT_CUT_MIN
    elif shift_cut > SHIFT_CUT_MAX:
        new.notes.append(f"shift_cut {shift_cut} > {SHIFT_CUT_MAX}: weight {new.weight} -> {new.weight - shift_cut + SHIFT_CUT_MAX}")
        new.weight -= shift_cut - SHIFT_CUT_MAX
    if new.bias is not None:
        shift_bias = new.weight + new.input - new.bias
        shift_bias_min = min(0, -(24 - (8 + shift_cut)))
        if shift_bias < shift_bias_min:
            new.notes.append(f"shift_bias {shift_bias} < {shift_bias_min}: bias {new.bias} -> {new.bias + shift_bias - shift_bias_min}")
            new.bias += shift_bias - shift_bias_min
        elif shift_bias > SHIFT_BIAS_MAX:
            new.notes.append(f"shift_bias {shift_bias} > {SHIFT_BIAS_MAX}: weight {new.weight} -> {new.weight - shift_bias + SHIFT_BIAS_MAX}")
            new.weight -= shift_bias - SHIFT_BIAS_MAX
    return new


#: ``get_avgpool_dpu_coeff`` special cases: kernel -> the scale the source multiplies the float average by.
_AVGPOOL_TABLE: dict[tuple[int, int], Fraction] = {
    (3, 3): Fraction(9 * 7, 64),
    (5, 5): Fraction(25 * 10, 256),
    (6, 6): Fraction(36 * 7, 256),
    (3, 6): Fraction(36 * 7, 256),
    (6, 3): Fraction(36 * 7, 256),
    (7, 7): Fraction(49 * 21, 1024),
    (14, 14): Fraction(196 * 21, 4096),
}


def _searched_reciprocal(count: int) -> Fraction:
    """``calculate_op_scale`` / the generic branch of ``get_avgpool_dpu_coeff``: the multiplier/2**shift
    nearest to 1/count over shifts 0 .. ceil(log2(count * 128)) - 1, first best kept. Python floats and
    Python's round (half to even), exactly as the source computes it."""
    max_factor = math.ceil(math.log(count * 128, 2))
    diff, multiplier, shift = 1.0, 0, 0
    for s in range(max_factor):
        factor = round((2**s) / count)
        d = abs(factor / (2**s) - 1 / count)
        if d < diff:
            multiplier, diff, shift = factor, d, s
    return Fraction(multiplier, 2**shift)


def avgpool_sum_factor(kernel: tuple[int, int]) -> Fraction:
    """What the DPU multiplies a window *sum* by for AvgPool2d / AdaptiveAvgPool2d with ``kernel``.

    The source scales the float average by ``scale``; average * scale = sum * (scale / count), a dyadic
    fraction multiplier / 2**shift that integer hardware computes with one multiply and one shift.
    """
    count = kernel[0] * kernel[1]
    scale = _AVGPOOL_TABLE.get((kernel[0], kernel[1]))
    if scale is None:
        return _searched_reciprocal(count)
    return scale / count


def mean_sum_factor(count: int) -> Fraction:
    """The same for ``torch.mean`` (``mean.py``): exact 1/count for a power of two, else the searched one
    (no special-case table)."""
    if count & (count - 1) == 0:
        return Fraction(1, count)
    return _searched_reciprocal(count)


def fraction_to_int_exp(value: Fraction) -> tuple[int, int]:
    """A dyadic fraction as ``(integer, exponent)`` with value = integer * 2**-exponent (exponent >= 0)."""
    den = value.denominator
    if den & (den - 1):
        raise ValueError(f"{value} is not a dyadic fraction")
    return value.numerator, den.bit_length() - 1

