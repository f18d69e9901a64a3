"""Where vai_q_pytorch's fix-position rules (ours) and AMD Quark 0.13's XINT8 rules differ, each side cited.

A rule names both tools' behaviour and, where they truly differ on the hardware, which one the
DPUCZDX8G compiler (vai_c_xir, Vitis AI 3.5) follows and why. Sources:
VAI = Xilinx/Vitis-AI ``src/vai_quantizer/vai_q_pytorch``; VAI-ONNX = Xilinx/Vitis-AI
``src/vai_quantizer/vai_q_onnx/vai_q_onnx`` (Vitis AI 3.5's ONNX quantizer, Quark's predecessor);
QUARK = amd/Quark ``quark/onnx`` (the installed amd-quark 0.13 package).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Rule:
    title: str
    #: What vai_q_pytorch does (and so our quantizer, vidconv_deploy/quant), with its source.
    vai_q: str
    #: What Quark's XINT8 does, with its source.
    quark: str
    #: Which one the DPUCZDX8G compiler follows, and why.
    compiler: str


#: The compiler of the dpu-* targets reads vai_q's xmodel, never a QDQ ONNX (TARGETS.md; Vitis AI 3.5 docs).
_COMPILER_INPUT = ("vai_c_xir compiles the xmodel vai_q_pytorch exports; no documented route compiles a Quark QDQ "
                   "ONNX into a DPUCZDX8G xmodel (Quark's graphs go to the Vitis AI EP)")

RULES: dict[str, Rule] = {
    "max_fix_pos": Rule(
        "position cap at 12",
        "calibrate_int caps every position of a tensor of <= 8 bits at nndct_max_fix_position, default 12 "
        "(VAI/pytorch_binding/pytorch_nndct/quantization/torchquantizer.py; VAI/nndct_shared/utils/option_list.py "
        "'maximum of fix position')",
        "no cap: the position is scale2pos of the MinMSE scale (QUARK/quantization/quant_utils.py scale2pos, "
        "QUARK/calibration/collectors.py compute_minmse_from_histogram)",
        "either: the cap is a quantizer option, not a DPU bound; the DPU's bounds are on the shifts derived from "
        "the positions (shift_cut, shift_bias), which both tools enforce. " + _COMPILER_INPUT),
    "input_scope": Rule(
        "graph input: non-overflow vs MinMSE",
        "graph inputs get scope 1: the largest position that does not overflow, no error search "
        "(VAI/pytorch_binding/pytorch_nndct/quantization/torchquantizer.py calibrate_int, 'scope = 1' for INPUT "
        "nodes; VAI/pytorch_binding/pytorch_nndct/nn/modules/fix_ops.py diffs_fix_pos)",
        "every activation, graph inputs included, by MinMSE: 5 positions from one below scale2pos(max|x| / 127) "
        "(QUARK/calibration/collectors.py compute_minmse_from_histogram)",
        "either: no compiler rule fixes an input's position; the board reads it from the xmodel (input scale "
        "2**fix_point, VART)."),
    "streaming_pin": Rule(
        "streaming seam: later input pinned to the early output",
        "the later graph's input is pinned to the early graph's output position so the host's int8 collage passes "
        "through unchanged (vidconv_deploy/targets/dpu_steps.py step_quantize, fixed_fix_points)",
        "each graph is quantized on its own: the later graph's input is calibrated by MinMSE on the collages "
        "(QUARK/calibration/collectors.py)",
        "ours: the DPU runs the two graphs as two xmodels and the host moves int8 codes between them; another "
        "position at the seam would need a requantization on the host."),
    "calibration_method": Rule(
        "calibration: vai_q diffs (mode over batches) vs Quark MinMSE (one histogram)",
        "diffs: per batch, positions floor(log2(127.5 / max|x|)) and up (scope 5), least squared error; the "
        "tensor's position is the mode over batches (VAI/pytorch_binding/pytorch_nndct/nn/modules/fix_ops.py "
        "diffs_fix_pos; torchquantizer.py calibrate_int)",
        "MinMSE 'All': one 2048-bin histogram over every batch, 5 positions from scale2pos(max|x| / 127) - 1, least "
        "histogram-weighted squared error (QUARK/calibration/collectors.py compute_minmse_from_histogram)",
        "either: calibration may pick any position; they part where the error curve is flat or batches disagree."),
    "shift_cut": Rule(
        "shift_cut = w + i - o in [0, 16]: which position moves",
        "below 0 the output position is lowered, above 16 the weight position (VAI/nndct_shared/quantization/"
        "fix_pos_adjust.py FixPosChecker.shift_cut_bias)",
        "the same range, but both bounds move the weight position (QUARK/postprocess/refinement/refine.py "
        "adjust_shift_cut)",
        "either: both keep shift_cut in [0, 16], the range of every Vitis AI 3.5 quantizer (VAI-ONNX/refine.py "
        "adjust_shift_cut too)."),
    "shift_bias": Rule(
        "shift_bias = w + i - b: upper bound 16 vs 15",
        "shift_bias in [min(0, -(24 - (8 + shift_cut))), 16]: below, the bias position moves; above, the weight "
        "position (VAI/nndct_shared/quantization/fix_pos_adjust.py FixPosChecker.shift_cut_bias)",
        "shift_bias in [min(0, -(24 - (8 + shift_cut))), 15], lower bound 0 before a LeakyRelu, and the bias "
        "position moves both ways (QUARK/postprocess/refinement/refine.py adjust_shift_bias)",
        "vai_q's 16: every Vitis AI 3.5 quantizer for the DPU uses it: vai_q_pytorch fix_pos_adjust.py, VAI-ONNX/"
        "refine.py adjust_shift_bias (max_sb = 16) and vai_q_tensorflow1.x graph_quantizer.cc ('DPU constraints "
        "for shift_bias ... shfit_bias <= 16'); Quark's 15 is stricter and also accepted."),
    "align_pool": Rule(
        "pool input and output positions aligned",
        "not aligned: nndct_change_pool_input_fix defaults to False (VAI/nndct_shared/utils/option_list.py), so a "
        "pool's output keeps its calibrated position",
        "align_pool sets a MaxPool/AveragePool/GlobalAveragePool output (or input) to the smaller of the two "
        "(QUARK/postprocess/refinement/refine.py align_pool)",
        "vai_q's: the DPUCZDX8G compiler takes unaligned pools. vai_q_pytorch leaves them unaligned by default, "
        "and Vitis AI 3.5's VAI-ONNX/refine.py align_pool never runs (its test `op not in [MaxPool] or op not in "
        "[AveragePool] or ...` skips every node); Quark 0.13 fixed that test for its NPU targets."),
    "align_concat": Rule(
        "concat inputs and output aligned",
        "nndct_change_concat_input_fix defaults to False; a sole-use input has no quantizer of its own and is "
        "written at the concat's calibrated position through quant_output (VAI/nndct_shared/utils/option_list.py; "
        "VAI/nndct_shared/nndct_graph/nndctgraph_holder.py quant_output; vidconv_deploy/quant/graph.py)",
        "align_concat sets every input and the output to their smallest position (QUARK/postprocess/refinement/"
        "refine.py align_concat)",
        "either: vai_c_xir compiles vai_q's concats, and the smallest position is also valid. " + _COMPILER_INPUT),
    "shift_read_write": Rule(
        "Add/Mul shift_read and shift_write bounds",
        "none: FixPosChecker registers shift rules for conv-like ops only and nndct_change_add_input_fix is False "
        "(VAI/nndct_shared/quantization/fix_pos_adjust.py; option_list.py)",
        "Add/Sub: shift_read = max(i) - min(i) <= 7, shift_write = min(i) - o in [-7, 25]; Mul: sum(i) - o in "
        "[0, 32], documented as 'NPU compiler constraints' (QUARK/postprocess/refinement/refine.py "
        "adjust_shift_read, adjust_shift_write)",
        "vai_q's: the bounds are Quark's NPU compilers'; VAI-ONNX/refine.py used [0, 15] and [-15, 15], and "
        "vai_q_pytorch, whose xmodels vai_c_xir compiles, applies none."),
    "hard_sigmoid": Rule(
        "HardSigmoid positions",
        "output position >= 7, input position >= 0 (VAI/nndct_shared/quantization/fix_pos_adjust.py "
        "output_must_larger_than_7, input_must_larger_than_0)",
        "also input position <= 15 and 14 + i - o > 0 (QUARK/postprocess/refinement/refine.py adjust_hard_sigmoid)",
        "either: both satisfy vai_q's DPU bounds."),
    "reshape_quantizer": Rule(
        "a Flatten/Reshape gets its own quantizer",
        "shape-only ops share their input's quantizer: no fix of their own (VAI/nndct_shared/nndct_graph/"
        "nndctgraph_holder.py MULTIPLE_OUTPUTS_OPS; vidconv_deploy/quant/graph.py PASS_THROUGH_OPS)",
        "the consumer's input (here the Flatten output) gets its own QDQ pair with its own MinMSE position; no "
        "refinement aligns it (QUARK/postprocess/refinement/refine.py aligns Concat, pools, Pad and Slice only)",
        "vai_q's: " + _COMPILER_INPUT + "; a second position on a reshape only exists in Quark's QDQ graph."),
    "param_range": Rule(
        "int8 weight/bias range: [-128, 127] vs [-127, 127]",
        "codes clamp to [-2**(bw-1), 2**(bw-1) - 1] = [-128, 127] (VAI/pytorch_binding/pytorch_nndct/nn/modules/"
        "fix_ops.py NndctFixNeuron, valmin = -valmax; vidconv_deploy/fixpoint/arithmetic.py QMIN)",
        "symmetric weights and biases clamp to [-127, 127] (QUARK/quantization/quant_utils.py quantize_nparray, "
        "get_qmin_qmax_for_qType(symmetric=True) -> ONNX_INT_TYPE_SYMMETRIC_RANGE)",
        "either: both are int8 codes the DPU stores as they are; a weight beyond -127.5 LSB keeps -128 with vai_q, "
        "the code vai_c_xir receives from vai_q's xmodel."),
    "param_rounding": Rule(
        "weight/bias rounding on ties",
        "half away from zero (method 3, std_round: VAI/include/cpu/nndct_fix_kernels_cpu.h _vai_round_cpu; "
        "torchquantizer.py calibrate_int picks it for params)",
        "half to even (numpy round in QUARK/quantization/quant_utils.py quantize_nparray)",
        "either: the compiler takes the codes as they are."),
    "leaky_relu_slope": Rule(
        "LeakyReLU slope",
        "forced to 26/256 (VAI/pytorch_binding/pytorch_nndct/nn/modules/leaky_relu.py; nndct_leaky_relu_approximate "
        "default True in option_list.py)",
        "round(alpha * 256) / 256 (QUARK/postprocess/simulation/simulate_dpu.py convert_leaky_relu_to_dpu_version, "
        "QUARK/quantization/quant_utils.py dpu_leaky_relu_alpha)",
        "vai_q's 26/256: vai_q_pytorch forces it for the DPU whatever alpha is (option_list.py 'enable leaky relu "
        "approximate for dpu') and vai_c_xir compiles vai_q's xmodel; Quark's round(alpha * 256) / 256 equals it "
        "only for alpha in [25.5/256, 26.5/256]."),
    "pool_scale": Rule(
        "average-pool / mean DPU factor",
        "window sum times the DPU's dyadic factor (VAI/nndct_shared/utils/dpu_utils.py get_avgpool_dpu_coeff)",
        "a Mul by the DPU factor after the pool, for square windows only (QUARK/postprocess/simulation/simulate_dpu.py "
        "convert_avg_pool_to_dpu_version: kernel_shape[0] == kernel_shape[1], or a GlobalAveragePool over a square "
        "input; fixed factors for 3, 5, 6, 7 and 14, else the closest k / 2**n); any other window keeps the exact "
        "average 1 / (kh * kw) ('Do not support rescale')",
        "vai_q's: the factor of vai_q's xmodel is the one vai_c_xir compiles; on square windows both factors agree."),
}
