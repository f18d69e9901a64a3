"""FINN-variant checkpoints: a QAT-trained or calibrated :class:`FinnViC` saved with its config and bit widths.

Same container as float checkpoints (safetensors, config in the header) but its own ``format``
tag, because its tensors include Brevitas' calibrated activation scales and only a FinnViC of the
same config and bits can take them. Loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from vidconv_deploy.atomic import atomic_path
from vidconv_deploy.checkpoints.loader import CONFIG_KEY
from vidconv_deploy.errors import CheckpointError
from vidconv_deploy.models.config import ViCConfig

FORMAT = "vidconv-deploy-finn"


def finn_metadata(path: str | os.PathLike[str]) -> dict[str, str] | None:
    """The header of a FINN checkpoint, or None when ``path`` is another kind of file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return None
    return metadata if metadata.get("format") == FORMAT else None


def save_finn_checkpoint(model: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Save a FinnViC (weights, BatchNorm statistics, quantizer scales) atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={CONFIG_KEY: json.dumps(model.cfg.to_dict()), "format": FORMAT,
                                               "bits": str(model.bits)})


def load_finn_checkpoint(path: str | os.PathLike[str]) -> torch.nn.Module:
    """Rebuild the FinnViC a FINN checkpoint describes and load it (eval mode)."""
    from vidconv_deploy.finn.model import build_finn_model

    metadata = finn_metadata(path)
    if metadata is None:
        raise CheckpointError(f"{path} is not a FINN checkpoint: give the file vidconv-finetune --qat wrote")
    model = build_finn_model(ViCConfig.from_dict(json.loads(metadata[CONFIG_KEY])), metadata["bits"])
    with safe_open(str(Path(path)), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit its own config ({len(missing)} missing, {len(unexpected)} "
                              f"unexpected tensors, e.g. {(missing or unexpected)[0]}): re-save it with vidconv-finetune --qat")
    return model.eval()
