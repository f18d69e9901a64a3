"""Load and save VidConv weights: strict, safe, and explicit about what happened.

Every foreign file goes through ``torch.load(..., weights_only=True)`` (never unpickle arbitrary
objects). A file that does not fit the model raises :class:`CheckpointError` with one line naming
the problem (missing keys, unexpected keys, shape mismatches, wrong architecture, not a
checkpoint) and the fix. Our own format is safetensors with the model config in its header, so a
file says what it builds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import typing
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vidconv_deploy.atomic import atomic_path
from vidconv_deploy.checkpoints.layouts import OURS, Layout, detect_layout
from vidconv_deploy.errors import CheckpointError, UserError
from vidconv_deploy.models.config import ARCHS, ViCConfig
from vidconv_deploy.models.vidconv import VidConv

#: safetensors header key under which our files store the model config.
CONFIG_KEY = "vidconv_config"
#: Wrappers around a state dict: MMAction2 ("state_dict"), Facebook ConvNeXt ("model"), others ("module").
WRAPPER_KEYS = ("state_dict", "model", "module")
#: How many names an error line lists before "(+N more)".
LISTED = 3

StateDict = dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What :func:`load_checkpoint` did: the layout it read, what it loaded, left initialised and dropped."""

    path: str
    layout: str
    loaded: int
    initialised: tuple[str, ...]
    dropped: tuple[str, ...]

    def summary(self) -> str:
        """One line a person reads."""
        text = f"loaded {self.loaded} tensors from {self.path} ({self.layout})"
        if self.initialised:
            text += f"; {len(self.initialised)} left initialised ({_listing(self.initialised)})"
        if self.dropped:
            text += f"; {len(self.dropped)} unused ({_listing(self.dropped)})"
        return text


def _listing(names: tuple[str, ...] | list[str]) -> str:
    shown = ", ".join(names[:LISTED])
    return shown + (f" (+{len(names) - LISTED} more)" if len(names) > LISTED else "")


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte header length followed by a JSON object."""
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> tuple[StateDict, dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}): re-save it with save_checkpoint") from None


#: How torch.save's files start: a zip archive (PyTorch >= 1.6) or a pickle of protocol 2 or later (older files).
ZIP_MAGIC, PICKLE_MAGIC = b"PK\x03\x04", b"\x80"


def _torch_load_failure(err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a zip or pickle file, in one short clause."""
    text = str(err)
    if "Unsupported global" in text:
        return "it holds Python objects beyond tensors, which are not loaded for safety"
    detail = next((line.strip() for line in text.splitlines()[1:] if line.strip()), "") if "WeightsUnpickler" in text else ""
    first = detail or (text.strip().splitlines()[0] if text.strip() else type(err).__name__)
    return f"it is a damaged or foreign PyTorch file ({first[:160]})"


def _read_torch(path: Path) -> StateDict:
    with path.open("rb") as f:
        head = f.read(4)
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        raise CheckpointError(f"{path} is not a checkpoint: it is not a zip, pickle or safetensors file; "
                              f"expected a PyTorch state dict (.pth) or a vidconv .safetensors file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for foreign files; each means "not a checkpoint"
        raise CheckpointError(f"{path} is not a checkpoint: {_torch_load_failure(err)}; "
                              f"expected a PyTorch state dict (.pth) or a vidconv .safetensors file") from None
    for _ in range(2):  # unwrap {"meta", "state_dict"} / {"model": ...}
        if isinstance(obj, dict):
            wrapper = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if wrapper is not None:
                obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind = type(obj).__name__ if not isinstance(obj, dict) else "a dict without tensors"
        raise CheckpointError(
            f"{path} is not a checkpoint: it holds {kind}, not a state dict of tensors; "
            f"pass the .pth file that training saved"
        )
    return {re.sub(r"^module\.", "", k): v for k, v in obj.items()}


def _check_type(value: object, hint: object) -> bool:
    """Whether a JSON value fits a config field's type: str, bool, int, float or a fixed-length tuple of ints."""
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        return isinstance(value, list) and len(value) == len(args) and all(_check_type(v, a) for v, a in zip(value, args))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _header_config(path: Path, text: str) -> ViCConfig:
    """The model config in a safetensors header, checked field by field, so that a broken header is one line."""
    fix = "use the file that vidconv-train or vidconv-finetune wrote, or re-export the model"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: the model config in its header is not JSON ({err.msg}): {fix}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: the model config in its header is {type(data).__name__}, not a JSON object: {fix}")
    hints = typing.get_type_hints(ViCConfig)
    fields = {f.name: f for f in dataclasses.fields(ViCConfig)}
    missing = [name for name, f in fields.items() if name not in data and f.default is dataclasses.MISSING]
    if missing:
        raise CheckpointError(f"{path}: the model config in its header lacks {', '.join(missing)}: {fix}")
    wrong = [f"{name}={str(data[name])[:40]}" for name in fields if name in data and not _check_type(data[name], hints[name])]
    if wrong:
        raise CheckpointError(f"{path}: the model config in its header has values of the wrong type or sign "
                              f"({_listing(wrong)}): {fix}")
    try:
        return ViCConfig.from_dict(data)
    except UserError as err:  # unknown fields or unsupported values: say which file
        raise CheckpointError(f"{path}: {err}") from None


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[StateDict, Layout, ViCConfig | None]:
    """Read a checkpoint file: its tensors, its layout, and the model config it carries (our format only)."""
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"checkpoint {file} does not exist: check the path")
    try:
        safetensors_file = _is_safetensors(file)
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {file} ({err.strerror}): check its permissions") from None
    if safetensors_file:
        state, metadata = _read_safetensors(file)
        cfg = _header_config(file, metadata[CONFIG_KEY]) if CONFIG_KEY in metadata else None
        layout = OURS if cfg is not None else detect_layout(list(state))
    else:
        state, cfg = _read_torch(file), None
        layout = detect_layout(list(state))
    if layout is None:
        raise CheckpointError(
            f"{file} is not a VidConv or ConvNeXt checkpoint: its keys ({_listing(sorted(state))}) match none of the "
            f"authors' MMAction2, Facebook, timm or torchvision layouts"
        )
    return state, layout, cfg


def _structure(state: StateDict) -> dict[str, object]:
    """Architecture facts readable from weights in our key names (missing facts are omitted)."""
    facts: dict[str, object] = {}
    widths = [state.get(f"backbone.downsample_layers.{i}.{0 if i == 0 else 1}.weight") for i in range(4)]
    if all(w is not None for w in widths):
        facts["dims"] = tuple(int(w.shape[0]) for w in widths)  # type: ignore[union-attr]
    blocks: dict[int, set[int]] = {}
    for key in state:
        m = re.match(r"backbone\.stages\.(\d+)\.(\d+)\.", key)
        if m:
            blocks.setdefault(int(m[1]), set()).add(int(m[2]))
    if sorted(blocks) == [0, 1, 2, 3]:
        facts["depths"] = tuple(max(blocks[i]) + 1 for i in range(4))
    tem = state.get("backbone.stages.2.0.dwconv_tem.weight")
    if tem is not None:
        facts["grid"] = (int(tem.shape[2]), int(tem.shape[3]))
    if "head.weight" in state:
        facts["num_classes"] = int(state["head.weight"].shape[0])
    return facts


def _arch_name(dims: object, depths: object) -> str:
    for name, spec in ARCHS.items():
        if spec.dims == dims and spec.depths == depths:
            return name
    return f"a custom ViC (dims {dims}, depths {depths})"


def _config_mismatch(path: Path, state: StateDict, cfg: ViCConfig) -> str | None:
    """A one-line 'wrong architecture/grid/classes' message when the weights were built for another config."""
    facts = _structure(state)
    if "dims" in facts and "depths" in facts and (facts["dims"], facts["depths"]) != (cfg.dims, cfg.depths):
        theirs = _arch_name(facts["dims"], facts["depths"])
        return (
            f"{path} holds {theirs} weights but the model is {_arch_name(cfg.dims, cfg.depths)}: "
            f"build the model with the checkpoint's architecture"
            + (f" (arch={theirs!r})" if theirs in ARCHS else "")
        )
    if "grid" in facts and facts["grid"] != cfg.grid:
        rows, cols = facts["grid"]  # type: ignore[misc]
        return (
            f"{path} was trained on a {rows}x{cols} collage ({rows * cols} frames) but the model uses "
            f"{cfg.grid[0]}x{cfg.grid[1]}: build the model with frames={rows * cols}"
        )
    if "num_classes" in facts and facts["num_classes"] != cfg.num_classes:
        return (
            f"{path} has {facts['num_classes']} classes but the model has {cfg.num_classes}: "
            f"build the model with num_classes={facts['num_classes']}"
        )
    return None


def _check_fit(path: Path, mapped: StateDict, unmapped: list[str], model: VidConv, layout: Layout) -> tuple[str, ...]:
    """Raise on missing/unexpected keys or shape mismatches; return our keys the layout leaves initialised."""
    expected = model.state_dict()
    mismatch = _config_mismatch(path, mapped, model.cfg)
    if mismatch:
        raise CheckpointError(mismatch)
    left = [k for k in expected if k not in mapped]
    initialised = tuple(k for k in left if layout.initialised is not None and layout.initialised.fullmatch(k))
    missing = [k for k in left if k not in initialised]
    unexpected = unmapped + [k for k in mapped if k not in expected]
    shapes = [
        f"{k} expected {list(expected[k].shape)} found {list(v.shape)}"
        for k, v in mapped.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_listing(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_listing(unexpected)})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches ({_listing(shapes)})")
    if problems:
        raise CheckpointError(
            f"{path} ({layout.description}) does not fit the {model.cfg.arch} model: {'; '.join(problems)}; "
            f"build the model the checkpoint was trained as, or use a checkpoint of this architecture"
        )
    return initialised


def load_checkpoint(model: VidConv, path: str | os.PathLike[str]) -> LoadReport:
    """Load weights into ``model`` strictly, from any supported layout, and report what was done.

    Supported: the authors' MMAction2 checkpoints, ImageNet ConvNeXt in Facebook, timm and
    torchvision layouts (temporal convs, alpha, neck and head stay initialised), and our safetensors.
    """
    state, layout, _ = read_checkpoint(path)
    return _load_state(model, Path(path), state, layout)


def _load_state(model: VidConv, file: Path, state: StateDict, layout: Layout) -> LoadReport:
    """Map ``state`` from ``layout`` onto ``model``, check the fit, and load it."""
    expected = model.state_dict()
    mapped: StateDict = {}
    unmapped: list[str] = []
    dropped: list[str] = []
    for key, tensor in state.items():
        if layout.dropped is not None and layout.dropped.fullmatch(key):
            dropped.append(key)
            continue
        ours = layout.map_key(key)
        if ours is None:
            unmapped.append(key)
        else:
            shape = expected[ours].shape if ours in expected else tensor.shape
            mapped[ours] = layout.convert(ours, tensor, shape)
    initialised = _check_fit(file, mapped, unmapped, model, layout)
    model.load_state_dict(mapped, strict=False)
    return LoadReport(str(file), layout.name, len(mapped), initialised, tuple(dropped))


def save_checkpoint(model: VidConv, path: str | os.PathLike[str]) -> None:
    """Save ``model`` as safetensors with its config in the header (atomic: temp name, then rename)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={CONFIG_KEY: json.dumps(model.cfg.to_dict()), "format": "vidconv-deploy"})


def load_model(path: str | os.PathLike[str], build: Callable[[], VidConv] | None = None) -> tuple[VidConv, LoadReport]:
    """Build the model a checkpoint describes and load it, reading the file once.

    Our safetensors files carry their config; for any other file ``build`` makes the model
    (e.g. from command-line flags), and without it that is an error.
    """
    state, layout, cfg = read_checkpoint(path)
    if cfg is not None:
        model = VidConv(cfg)
    elif build is not None:
        model = build()
    else:
        raise CheckpointError(
            f"{path} does not say which model it builds (only vidconv .safetensors files do): "
            f"give the architecture (--arch) as well"
        )
    return model, _load_state(model, Path(path), state, layout)
