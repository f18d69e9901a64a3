"""The finn-plus flow for one graph: QONNX -> FINN-ONNX -> streamlined -> HW layers -> dataflow -> estimates.

Each function is one builder step of finn-plus 1.6.1 (``finn/builder/build_dataflow_steps.py``),
applying the same transformations in the same order with the builder's default configuration
(``finn/builder/build_dataflow_config.py``: ``standalone_thresholds=False``, ``requant_bitwidth_threshold=9``,
``mvau_wwidth_max=36``, ``folding_two_pass_relaxation=True``, ``synth_clk_period_ns=10.0``), except for
the work-arounds listed in :data:`vidconv_deploy.finn.finn_env.WORKAROUNDS`. Call them inside
:func:`vidconv_deploy.finn.finn_env.finn_session`.

Host side: the host quantizes a graph's input, supplies it channels-last and rescales its output
(:class:`HostIO`); the FINN graphs take and give integers, so every node between them is a HW layer.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import qonnx.core.data_layout as data_layout
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.custom_op.registry import getCustomOp
from qonnx.transformation.base import Transformation
from qonnx.transformation.composed import ComposedTransformation
from qonnx.transformation.fold_constants import FoldConstants
from qonnx.transformation.general import (
    GiveReadableTensorNames, GiveUniqueNodeNames, RemoveStaticGraphInputs, RemoveUnusedTensors,
)
from qonnx.transformation.infer_data_layouts import InferDataLayouts
from qonnx.transformation.infer_datatypes import InferDataTypes
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul
from qonnx.util.cleanup import cleanup_model

import finn.transformation.streamline.absorb as absorb
from finn.analysis.fpgadataflow.dataflow_performance import dataflow_performance
from finn.analysis.fpgadataflow.exp_cycles_per_layer import exp_cycles_per_layer
from finn.analysis.fpgadataflow.op_and_param_counts import aggregate_dict_keys
from finn.analysis.fpgadataflow.res_estimation import res_estimation
from finn.transformation.fpgadataflow.annotate_cycles import AnnotateCycles
from finn.transformation.fpgadataflow.convert_to_hw.binary_matrix_vector_activation import InferBinaryMatrixVectorActivation
from finn.transformation.fpgadataflow.convert_to_hw.concat import InferConcatLayer
from finn.transformation.fpgadataflow.convert_to_hw.conv_inp_gen import InferConvInpGen
from finn.transformation.fpgadataflow.convert_to_hw.crop import InferCrop
from finn.transformation.fpgadataflow.convert_to_hw.duplicate_streams import InferDuplicateStreamsLayer
from finn.transformation.fpgadataflow.convert_to_hw.elementwise_binary_operation import InferElementwiseBinaryOperation
from finn.transformation.fpgadataflow.convert_to_hw.fm_padding import InferFMPadding
from finn.transformation.fpgadataflow.convert_to_hw.global_acc_pool import InferGlobalAccPoolLayer
from finn.transformation.fpgadataflow.convert_to_hw.hw_softmax import InferHWSoftmax
from finn.transformation.fpgadataflow.convert_to_hw.label_select import InferLabelSelectLayer
from finn.transformation.fpgadataflow.convert_to_hw.layer_norm import InferLayerNorm
from finn.transformation.fpgadataflow.convert_to_hw.lookup import InferLookupLayer
from finn.transformation.fpgadataflow.convert_to_hw.pad1d import InferPad1DLayer
from finn.transformation.fpgadataflow.convert_to_hw.pool import InferPool
from finn.transformation.fpgadataflow.convert_to_hw.pool_from_reduce import InferPoolFromReduce
from finn.transformation.fpgadataflow.convert_to_hw.pwpolyf import InferPWPolyFLayer
from finn.transformation.fpgadataflow.convert_to_hw.quantized_matrix_vector_activation import (
    InferQuantizedMatrixVectorActivation,
)
from finn.transformation.fpgadataflow.convert_to_hw.relu_as_elementwise_max import InferReLUAsElementwiseMax
from finn.transformation.fpgadataflow.convert_to_hw.requant import InferRequantLayer
from finn.transformation.fpgadataflow.convert_to_hw.select_token import InferSelectTokenLayer
from finn.transformation.fpgadataflow.convert_to_hw.shuffle import InferShuffle
from finn.transformation.fpgadataflow.convert_to_hw.split import InferSplitLayer
from finn.transformation.fpgadataflow.convert_to_hw.thresholding import InferThresholdingLayer
from finn.transformation.fpgadataflow.convert_to_hw.upsample import InferUpsample
from finn.transformation.fpgadataflow.convert_to_hw.vector_vector_activation import InferVectorVectorActivation
from finn.transformation.fpgadataflow.convert_to_hw.where import InferWhereLayer
from finn.transformation.fpgadataflow.create_dataflow_partition import CreateDataflowPartition
from finn.transformation.fpgadataflow.minimize_accumulator_width import MinimizeAccumulatorWidth
from finn.transformation.fpgadataflow.minimize_weight_bit_width import MinimizeWeightBitWidth
from finn.transformation.fpgadataflow.set_folding import SetFolding
from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
from finn.transformation.fpgadataflow.transpose_decomposition import InferInnerOuterShuffles, ShuffleDecomposition
from finn.transformation.move_reshape import RemoveCNVtoFCFlatten
from finn.transformation.qonnx.convert_qonnx_to_finn import ConvertQONNXtoFINN
from finn.transformation.streamline import Streamline
from finn.transformation.streamline.reorder import MakeMaxPoolNHWC
from finn.transformation.streamline.round_thresholds import RoundAndClipThresholds
from finn.transformation.streamline.streamline_plus import StreamlinePlus
from finn.util.config import extract_model_config

from vidconv_deploy.check.ruleset import load_ruleset
from vidconv_deploy.finn.finn_env import finn_warnings

#: finn-plus's default clock for estimates and builds (build_dataflow_config.py synth_clk_period_ns).
CLK_NS = 10.0
#: The builder's defaults we follow (build_dataflow_config.py).
MVAU_WWIDTH_MAX = 36
REQUANT_BITWIDTH_THRESHOLD = 9
#: Node attributes a folding config holds (build_dataflow_steps.py step_target_fps_parallelization).
FOLDING_ATTRS = ("PE", "SIMD", "EmbFold", "SeqFold", "parallel_window", "ram_style", "ram_style_thresholds",
                 "ram_style_mask", "depth", "impl_style", "resType", "mac_resource", "mem_mode",
                 "runtime_writeable_weights", "depth_trigger_uram", "depth_trigger_bram")
#: UltraRAM placement: MVAU weight memories of at least this many BRAM_18K go to URAM on parts that have it.
URAM_MIN_BRAM = 32
#: A cycle target no layer misses: SetFolding then keeps every layer at PE = SIMD = 1.
FULLY_FOLDED = 2**62
#: A bound on streamlining passes; vic-nano's graphs settle in three.
MAX_STREAMLINE_PASSES = 12
FPGADATAFLOW = "finn.custom_op.fpgadataflow"

#: Why an op is known to stay off the accelerator, from what we measured with finn-plus 1.6.1.
KNOWN_UNMAPPED = {
    "Reshape": "InferReshape is not run (hw/rules/finn.yaml convert_to_hw.skipped); only a Reshape-Transpose-Reshape "
               "becomes a Shuffle: write the reshape as part of a permutation or remove it",
    "Transpose": "a Transpose that streamlining could not cancel and InferShuffle did not take",
    "Resize": "only nearest resizing of a channels-last integer tensor becomes UpsampleNearestNeighbour",
    "MultiThreshold": "a quantizer whose input layout or width no Thresholding/Requant layer accepts",
    "ReduceMean": "a mean over spatial axes: streamlining cannot move the scale before it past it, so its input "
                  "stays float; average with Brevitas TruncAvgPool2d instead (it becomes FINN's Pool)",
}


@dataclasses.dataclass
class HostIO:
    """What the host does around a FINN graph (recorded in the report, done by :mod:`.chain`)."""

    input_ops: list[str] = dataclasses.field(default_factory=list)
    output_ops: list[str] = dataclasses.field(default_factory=list)
    output_scale: float | None = None
    input_datatype: str = ""
    output_datatype: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class PeelHostIO(Transformation):
    """Move the graph's input quantizer, its output scale and boundary layout Transposes to the host.

    The input MultiThreshold quantizes the float input (the host does it with the Brevitas quantizer
    itself); a leading NCHW->NHWC / trailing NHWC->NCHW Transpose only changes layout (the host
    supplies and takes channels-last); a trailing scalar Mul is the output scale. Peeled before
    StreamlinePlus, which otherwise swaps the last Mul and Transpose back and forth forever.
    """

    def __init__(self, record: HostIO) -> None:
        super().__init__()
        self.record = record

    def apply(self, model: ModelWrapper) -> tuple[ModelWrapper, bool]:
        return model, self._peel_input(model) or self._peel_output(model)

    def _peel_input(self, model: ModelWrapper) -> bool:
        graph_in = model.graph.input[0].name
        consumers = model.find_consumers(graph_in)
        if len(consumers) != 1:
            return False
        node = consumers[0]
        quantizer = node.op_type == "MultiThreshold" and not self.record.input_ops
        to_nhwc = node.op_type == "Transpose" and list(node.attribute[0].ints) == [0, 2, 3, 1]
        if not (quantizer or to_nhwc):
            return False
        dtype = model.get_tensor_datatype(node.output[0]) if quantizer else model.get_tensor_datatype(graph_in)
        shape = model.get_tensor_shape(node.output[0])
        for consumer in model.find_consumers(node.output[0]):
            consumer.input[:] = [graph_in if name == node.output[0] else name for name in consumer.input]
        model.graph.node.remove(node)
        model.set_tensor_shape(graph_in, shape)
        model.set_tensor_datatype(graph_in, dtype)
        self.record.input_ops.append("quantize (Brevitas input quantizer)" if quantizer else "NCHW -> NHWC")
        self.record.input_datatype = dtype.name
        return True

    def _peel_output(self, model: ModelWrapper) -> bool:
        graph_out = model.graph.output[0].name
        node = model.find_producer(graph_out)
        if node is None:
            return False
        scale = model.get_initializer(node.input[1]) if node.op_type == "Mul" else None
        is_scale = scale is not None and scale.size == 1
        to_nchw = node.op_type == "Transpose" and list(node.attribute[0].ints) == [0, 3, 1, 2]
        if not (is_scale or to_nchw):
            return False
        source = node.input[0]
        producer = model.find_producer(source)
        if producer is None or len(model.find_consumers(source)) != 1:
            return False
        shape, dtype = model.get_tensor_shape(source), model.get_tensor_datatype(source)
        producer.output[:] = [graph_out if name == source else name for name in producer.output]
        model.graph.node.remove(node)
        model.set_tensor_shape(graph_out, shape)
        model.set_tensor_datatype(graph_out, dtype)
        if is_scale:
            self.record.output_scale = float(scale.reshape(-1)[0]) * (self.record.output_scale or 1.0)
            self.record.output_ops.insert(0, "multiply by the output scale")
        else:
            self.record.output_ops.insert(0, "NHWC -> NCHW")
        self.record.output_datatype = dtype.name
        return True


def _flat(transformation: Transformation) -> list[Transformation]:
    if isinstance(transformation, ComposedTransformation):
        return [t for inner in transformation.transformations for t in _flat(inner)]
    return [transformation]


def _exhaust(model: ModelWrapper, transformation: Transformation) -> ModelWrapper:
    """ModelWrapper.transform without its deep copy (vic-nano's lowered graphs hold tens of MB of weights)."""
    return model.transform(transformation, make_deepcopy=False)


def to_finn(qonnx: ModelWrapper) -> ModelWrapper:
    """QONNX (Brevitas export) -> FINN-ONNX: step_qonnx_to_finn + step_tidy_up."""
    model = cleanup_model(qonnx)
    model = model.transform(ConvertQONNXtoFINN())
    for t in (InferShapes(), FoldConstants(), GiveUniqueNodeNames(), GiveReadableTensorNames(), InferDataTypes(),
              RemoveStaticGraphInputs()):
        model = model.transform(t)
    return model


def streamline(model: ModelWrapper) -> tuple[ModelWrapper, HostIO]:
    """step_streamline (incl. lowering convs to Im2Col + MatMul), host I/O peeled, then StreamlinePlus."""
    model = model.transform(absorb.AbsorbScalarBiasIntoMultiThreshold())
    model = model.transform(Streamline())
    model = model.transform(LowerConvsToMatMul())
    model = model.transform(MakeMaxPoolNHWC())
    model = model.transform(absorb.AbsorbTransposeIntoMultiThreshold())
    model = model.transform(MakeMaxPoolNHWC())
    model = model.transform(absorb.AbsorbConsecutiveTransposes())
    model = model.transform(Streamline())
    host = HostIO()
    model = model.transform(PeelHostIO(host))
    # StreamlinePlus (finn/transformation/streamline/streamline_plus.py) in its order, plus moving
    # channels-first Transposes past nearest Resize (absorb.py AbsorbTransposeIntoResize).
    passes = [*_flat(StreamlinePlus()), absorb.AbsorbTransposeIntoResize()]
    for _ in range(MAX_STREAMLINE_PASSES):
        # Settled when a whole pass leaves the graph as it was (some transformations report a change
        # and another one undoes it, so their flags alone never settle).
        before = model.model.SerializeToString()
        for t in passes:
            model = _exhaust(model, t)
        if model.model.SerializeToString() == before:
            break
    else:
        raise RuntimeError(f"streamlining did not settle in {MAX_STREAMLINE_PASSES} passes")
    if len(model.get_tensor_shape(model.graph.input[0].name)) == 4:
        model.set_tensor_layout(model.graph.input[0].name, data_layout.NHWC)
    model = model.transform(InferDataLayouts())
    model = model.transform(RemoveUnusedTensors())
    return model, host


#: Every transformation step_convert_to_hw may run, by name, configured as the builder's defaults
#: configure it (standalone_thresholds=False, requant_bitwidth_threshold=9).
_CONVERTERS: dict[str, Transformation] = {t.__class__.__name__: t for t in (
    InferBinaryMatrixVectorActivation(), InferQuantizedMatrixVectorActivation(), InferVectorVectorActivation(),
    InferLabelSelectLayer(), InferRequantLayer(bitwidth_threshold=REQUANT_BITWIDTH_THRESHOLD), InferThresholdingLayer(),
    InferFMPadding(), InferPool(), InferPoolFromReduce(), InferConvInpGen(), RemoveCNVtoFCFlatten(), InferPad1DLayer(),
    InferConcatLayer(), InferSplitLayer(), InferElementwiseBinaryOperation(), InferWhereLayer(), InferReLUAsElementwiseMax(),
    InferUpsample(), InferGlobalAccPoolLayer(), InferSelectTokenLayer(), InferCrop(), InferLookupLayer(), InferHWSoftmax(),
    InferPWPolyFLayer(), InferLayerNorm(),
)}


def _convert_to_hw_steps() -> tuple[tuple[tuple[str, ...], Transformation], ...]:
    """(op types that make it relevant, transformation) in step_convert_to_hw's order.

    The list is ``convert_to_hw`` in ``hw/rules/finn.yaml``, which ``vidconv-check --target finn``
    reads too: what the checker calls a HW layer is what this flow converts.
    """
    steps = load_ruleset("finn").data["convert_to_hw"]["steps"]
    return tuple((tuple(step["ops"]), _CONVERTERS[step["transformation"]]) for step in steps)


_TO_HW = _convert_to_hw_steps()


def minimize_bit_width(model: ModelWrapper) -> ModelWrapper:
    """The builder's _minimize_bit_width (minimize_bit_width=True): tighten weight, accumulator and threshold widths."""
    for t in (MinimizeWeightBitWidth(), MinimizeAccumulatorWidth(), InferDataTypes(), RoundAndClipThresholds(),
              InferDataTypes(), MinimizeWeightBitWidth(), InferDataTypes()):
        model = model.transform(t)
    return model


def convert_to_hw(model: ModelWrapper) -> ModelWrapper:
    """step_convert_to_hw (every Infer* transformation the builder runs, in its order, as listed in
    hw/rules/finn.yaml; InferReshape skipped) and step_minimize_bit_width_initial."""
    for op_types, transformation in _TO_HW:
        if any(model.get_nodes_by_op_type(op) for op in op_types):
            model = model.transform(transformation)
    model = model.transform(InferDuplicateStreamsLayer())
    model = model.transform(absorb.AbsorbConsecutiveTransposes())
    model = model.transform(RemoveCNVtoFCFlatten())
    for t in (GiveUniqueNodeNames(), InferDataLayouts(), InferDataTypes(), InferShapes()):
        model = model.transform(t)
    if model.get_nodes_by_op_type("Transpose"):
        model = model.transform(InferShuffle())  # infer_shuffle_skip_first=True, the builder's default
    return minimize_bit_width(model)


def unmapped_nodes(model: ModelWrapper) -> list[dict[str, str]]:
    """Every node that is not a FINN HW layer, with the reason it stayed off the accelerator."""
    found = []
    for node in model.graph.node:
        if node.domain.startswith(FPGADATAFLOW):
            continue
        floats = [name for name in node.input if name and model.get_initializer(name) is None
                  and not model.get_tensor_datatype(name).is_integer()]
        why = [KNOWN_UNMAPPED.get(node.op_type, f"no finn-plus convert_to_hw transformation converts this {node.op_type} node")]
        if floats:
            why.append(f"its input {floats[0]} is {model.get_tensor_datatype(floats[0]).name}, and FINN HW layers take "
                       f"integers only (a scale streamlining could not move, or no quantizer before it)")
        found.append({"node": node.name, "op_type": node.op_type, "why": "; ".join(why)})
    return found


@dataclasses.dataclass
class Dataflow:
    """A specialized, folded dataflow graph with its folding config and what FINN said while folding."""

    model: ModelWrapper
    folding: dict[str, Any]
    notes: list[str]


def weights_to_uram(model: ModelWrapper, part: str, min_bram: int) -> list[str]:
    """Move every MVAU weight memory of ``min_bram`` BRAM_18K or more to UltraRAM, widened to fill its words.

    Why widen: fully folded (PE = SIMD = 1) a 4-bit layer reads 4-bit words, and a BRAM_18K and a
    URAM both hold 4096 of those, so moving it alone saves nothing. With SIMD raised to the largest
    divisor of the input width that keeps the weight stream within the builder's ``mvau_wwidth_max``
    (36 bits), one URAM (4096 x 72 bits, UG573) holds about 9x more weights; the layer also runs
    SIMD times faster. ``ram_style="ultra"`` needs ``runtime_writeable_weights=1`` (the MVAU
    attribute's own comment in finn-plus). This is the memory step FINN users otherwise do by hand
    when a board's BRAM runs out first (vic-nano w4a4 on a KV260: 404 BRAM_18K of 288). Returns notes.
    """
    notes = []
    for node in model.graph.node:
        if not node.op_type.startswith("MVAU"):
            continue
        inst = getCustomOp(node)
        brams = inst.bram_estimation(part)
        if brams < min_bram:
            continue
        pe, simd = inst.get_nodeattr("PE"), inst.get_nodeattr("SIMD")
        bits = inst.get_input_datatype(1).bitwidth()
        width = inst.get_nodeattr("MW")
        wide = max((d for d in range(1, width + 1) if width % d == 0 and d * pe * bits <= MVAU_WWIDTH_MAX), default=simd)
        inst.set_nodeattr("SIMD", max(simd, wide))
        inst.set_nodeattr("ram_style", "ultra")
        inst.set_nodeattr("runtime_writeable_weights", 1)
        notes.append(f"{node.name}: weights to URAM at SIMD {max(simd, wide)} (were {brams} BRAM_18K at SIMD {simd})")
    return notes


def specialize_and_fold(model: ModelWrapper, part: str, target_cycles: int, workdir: Path,
                        uram_min_bram: int | None = None) -> Dataflow:
    """step_create_dataflow_partition, step_specialize_layers, step_target_fps_parallelization,
    step_minimize_bit_width, step_transpose_decomposition: the dataflow graph ready for ``finn build``.

    ``uram_min_bram``: move MVAU weight memories at least this large to UltraRAM (:func:`weights_to_uram`);
    None leaves every memory where FINN puts it."""
    parent = model.transform(CreateDataflowPartition(partition_model_dir=str(workdir)))
    partitions = parent.get_nodes_by_op_type("StreamingDataflowPartition")
    if len(partitions) != 1 or len(parent.graph.node) != 1:
        raise RuntimeError(f"expected the whole graph in one dataflow partition, got {len(parent.graph.node)} nodes")
    model = ModelWrapper(getCustomOp(partitions[0]).get_nodeattr("model"))
    model = model.transform(SpecializeLayers(part))
    for t in (GiveUniqueNodeNames(), InferShapes(), InferDataTypes()):
        model = model.transform(t)
    with finn_warnings() as said:
        model = model.transform(SetFolding(target_cycles, mvau_wwidth_max=MVAU_WWIDTH_MAX, two_pass_relaxation=True))
    model = minimize_bit_width(model.transform(GiveUniqueNodeNames()))
    if model.get_nodes_by_op_type("Shuffle"):
        for t in (ShuffleDecomposition(), InferInnerOuterShuffles(), SpecializeLayers(part), InferShapes(),
                  InferDataTypes(), GiveUniqueNodeNames()):
            model = model.transform(t)
    notes = [f"SetFolding: {w}" for w in dict.fromkeys(said)]
    if uram_min_bram is not None:
        notes += weights_to_uram(model, part, uram_min_bram)
    return Dataflow(model, extract_model_config(model, None, FOLDING_ATTRS), notes)


def estimate(model: ModelWrapper, part: str, clk_ns: float = CLK_NS) -> dict[str, Any]:
    """step_generate_estimate_reports: per-layer cycles and resources, totals, throughput and latency.

    Every number comes from finn-plus's analytical estimators (exp_cycles_per_layer, res_estimation,
    dataflow_performance); fps and latency are computed from them exactly as the builder does.
    """
    cycles = model.analysis(exp_cycles_per_layer)
    resources = model.analysis(partial(res_estimation, fpgapart=part))
    model = model.transform(AnnotateCycles())
    perf = model.analysis(dataflow_performance)
    return {
        "layers": {name: {"cycles": int(cycles[name]), **resources.get(name, {})} for name in cycles},
        "resources": {k: float(v) for k, v in aggregate_dict_keys(resources).items()},
        "max_cycles": perf["max_cycles"],
        "max_cycles_node": perf["max_cycles_node_name"],
        "critical_path_cycles": perf["critical_path_cycles"],
        "fps": 1e9 / clk_ns / perf["max_cycles"],
        "latency_ms": perf["critical_path_cycles"] * clk_ns / 1e6,
    }


def target_cycles(fps: float | None, clk_ns: float = CLK_NS) -> int:
    """Cycles per input at ``fps`` (build_dataflow_config.py _resolve_cycles_per_frame); no fps: fold fully.

    Without a target, FINN's own defaults are uneven (InferVectorVectorActivation makes depthwise
    layers fully parallel over channels, MVAUs fully folded), so we ask SetFolding for the
    smallest design instead: every layer at PE = SIMD = 1.
    """
    return FULLY_FOLDED if fps is None else int(1e9 / clk_ns / fps)


def as_ints(array: np.ndarray) -> np.ndarray:
    """FINN executes integer tensors as floats; check they hold integers and return them as int64."""
    rounded = np.round(array)
    if not np.isfinite(array).all() or not np.array_equal(rounded, array):
        raise RuntimeError("a FINN graph produced non-integer values where integers were expected")
    return rounded.astype(np.int64)
