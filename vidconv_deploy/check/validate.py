"""Is the model valid ONNX at all? Asked before any rule, so that a broken model is an error, not "compliant".

The rules read kernels, channels and attributes. A model whose external weights are missing, whose
attribute has the wrong type or whose Conv weight does not fit its input would be judged on
nonsense, pass, and then fail in the vendor's compiler or on the board. So before any rule:

1. every external data file a tensor names exists next to the model and is long enough;
2. the ONNX checker accepts the graph (structure, nodes, attributes; ONNX Runtime checks the weights);
3. strict shape inference (types checked, data propagated) succeeds on every node;
4. every Conv/ConvTranspose weight fits its input's channels (shape inference does not check this);
5. when every node is a standard ONNX op, ONNX Runtime builds a CPU session for it. Only the
   session: running it would cost seconds per big graph, and building it already resolves every
   node to a kernel and loads the external data.

Custom-domain graphs (QONNX, FINN) get 1-4: ONNX knows no schema for their nodes, so the checker
and shape inference check their structure and standard nodes, and ONNX Runtime has no kernels.
"""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import onnxruntime as ort
from onnx import helper, shape_inference
from onnx.external_data_helper import ExternalDataInfo

from vidconv_deploy.errors import UserError
from vidconv_deploy.onnx_shapes import weightless

STANDARD_DOMAINS = frozenset({"", "ai.onnx"})
# Tensors up to this many elements keep their values for shape inference (shapes, axes, scales).
_NODE_ERROR = re.compile(r"\(op_type:(?P<op>[^,]+), node name: (?P<node>[^)]*)\): (?:\[\w+\] )?(?P<why>.+)$")
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")


def _first_line(err: BaseException) -> str:
    """The first line of an error: onnx and ONNX Runtime append C++ context a one-line message cannot hold."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _inference_reason(err: BaseException) -> str:
    """The node and the reason from onnx's "[...] Inference error(s): (op_type:T, node name: N): [...] why"."""
    found = _NODE_ERROR.search(_first_line(err))
    return f"node {found['node']!r} ({found['op']}): {found['why'].rstrip('.')}" if found else _first_line(err)


def _external_tensors(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    """Initializers and Constant node tensors of the main graph whose data lives in another file."""
    tensors = list(graph.initializer) + [a.t for n in graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    return [t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]


def _check_external_data(proto: onnx.ModelProto, source: Path | None) -> None:
    """Every external data file exists inside the model's folder and holds the bytes its tensor needs."""
    tensors = _external_tensors(proto.graph)
    if not tensors:
        return
    if source is None:
        raise UserError(f"model: tensor {tensors[0].name!r} keeps its data in the external file "
                        f"{ExternalDataInfo(tensors[0]).location!r}, which an in-memory model cannot locate: pass the .onnx path")
    folder = source.resolve().parent
    for tensor in tensors:
        info = ExternalDataInfo(tensor)
        file = (folder / info.location).resolve()
        if not file.is_relative_to(folder):
            raise UserError(f"{source}: tensor {tensor.name!r} keeps its data in {info.location!r}, outside the model's folder: "
                            "save the model with its data file next to it")
        if not file.is_file():
            raise UserError(f"{source}: tensor {tensor.name!r} keeps its data in {info.location!r}, which is missing: "
                            f"copy {info.location!r} next to the model, or save the model with its data inside")
        end = (info.offset or 0) + (info.length or 0)  # onnx.save records both; ONNX Runtime checks the rest
        if end > file.stat().st_size:
            raise UserError(f"{source}: tensor {tensor.name!r} needs bytes up to {end} of {info.location!r}, which has "
                            f"{file.stat().st_size}: the data file is truncated or belongs to another model; save the model again")


def _light_view(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model as the ONNX checker and shape inference see it: without its large weights.

    Both need a weight's type and shape, and the values of small tensors only (shapes, axes,
    scales); ONNX's Python API serializes the whole model per call, which costs more than the check
    itself for a 100 MB graph (ONNX Runtime then loads the weights, and checks them). External
    tensors become graph inputs too: their files were checked above, and the in-memory checker
    would look for them in the working directory. A graph output declared without a shape gets the
    inferred one, or is left out: ONNX Runtime and the vendors' tools accept such outputs; that the
    declaration is incomplete is a finding of the ``onnx`` rule set, not a broken model.
    """
    view, graph = weightless(proto), proto.graph
    if any(not o.type.tensor_type.HasField("shape") for o in graph.output):
        try:
            inferred = {o.name: o for o in shape_inference.infer_shapes(view, strict_mode=False).graph.output}
        except Exception:  # a graph even lenient inference refuses: the checker and strict inference say why
            inferred = {}
        outputs = [inferred.get(o.name, o) for o in graph.output]
        del view.graph.output[:]
        view.graph.output.extend(o for o in outputs if o.type.tensor_type.HasField("shape"))
    return view


def _static_dims(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Tensor name -> its shape, for every tensor whose dims are all known."""
    dims: dict[str, tuple[int, ...]] = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        shape = vi.type.tensor_type.shape
        if vi.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in shape.dim):
            dims[vi.name] = tuple(d.dim_value for d in shape.dim)
    return dims


def _check_conv_channels(model: onnx.ModelProto, label: str) -> None:
    """Every Conv/ConvTranspose weight fits its input's channels: ONNX shape inference leaves this to the runtime."""
    dims = _static_dims(model)
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose") or node.domain not in STANDARD_DOMAINS or len(node.input) < 2:
            continue
        x, w = dims.get(node.input[0]), dims.get(node.input[1])
        if not x or not w or len(x) < 2 or len(w) < 2:
            continue
        group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
        expected = w[1] * group if node.op_type == "Conv" else w[0]
        if x[1] != expected:
            how = f"{w[1]} x group {group}" if node.op_type == "Conv" else "its first dim"
            raise UserError(f"{label}: node {node.name!r} ({node.op_type}) reads {x[1]} channels from {node.input[0]!r}, but its "
                            f"weight {node.input[1]!r} of shape {list(w)} expects {expected} ({how}): re-export the model")


def _check_runtime(model: bytes | str, label: str) -> None:
    """ONNX Runtime builds a CPU session: every node resolves to a kernel and the external data loads."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # no constant folding of big weights
    options.log_severity_level = 4  # the exception says it; ONNX Runtime's logger would print it on stderr as well
    try:
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ONNX Runtime raises its own exception types (Fail, InvalidGraph, ...)
        reason = _ORT_PREFIX.sub("", _first_line(err))
        if " was false. " in reason:  # a failed C++ check: "<file>:<line> <signature> <condition> was false. <why>"
            reason = reason.rsplit(" was false. ", 1)[1]
        raise UserError(f"{label}: ONNX Runtime cannot load it ({reason}): re-export the model") from None


def validate_model(proto: onnx.ModelProto, source: Path | None) -> None:
    """Raise :class:`UserError` (one line: what is wrong, then the fix) unless ``proto`` is a valid model.

    ``proto`` is the model as read (external data not loaded, nodes in topological order);
    ``source`` its file, where external data is resolved, or None for an in-memory model.
    """
    label = str(source) if source is not None else "model"
    _check_external_data(proto, source)
    view = _light_view(proto)
    try:
        onnx.checker.check_model(view)
    except onnx.checker.ValidationError as err:
        raise UserError(f"{label}: the ONNX checker rejects it ({_first_line(err)}): re-export the model") from None
    try:
        inferred = shape_inference.infer_shapes(view, check_type=True, strict_mode=True, data_prop=True)
    except Exception as err:  # InferenceError, or a type/attribute error raised from onnx's C++ code
        raise UserError(f"{label}: shape inference fails ({_inference_reason(err)}): re-export the model") from None
    _check_conv_channels(inferred, label)
    if all(n.domain in STANDARD_DOMAINS for n in proto.graph.node):
        # From the file when there is one: ONNX Runtime resolves external data next to it.
        _check_runtime(str(source) if source is not None else proto.SerializeToString(), label)
