"""VidConv configurations as data: the paper's Table 1 plus everything derived from clip and image size.

A :class:`ViCConfig` says completely what a model builds, so it is also what our own checkpoint
format stores next to the weights. The authors hard-code dilations 14/7 for 224x224 input; here
they follow the per-frame feature size, so any image size that is a multiple of 32 works.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any

from vidconv_deploy.errors import UserError


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """Widths and depths of one architecture (paper Table 1)."""

    dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    neck_dim: int
    image_size: int = 224


#: Paper Table 1. ViC-B keeps C3 = 2304 as the table says (the authors' head default would be 3 * 1024).
#: ``vic-nano`` is ours: the demo model, small enough to train on two CPU cores in minutes; its
#: widths are multiples of 16 so every conv fills the DPU's channel parallelism.
ARCHS: dict[str, ArchSpec] = {
    "vic-nano": ArchSpec(dims=(32, 64, 128, 256), depths=(1, 1, 2, 1), neck_dim=256, image_size=64),
    "vic-t": ArchSpec(dims=(96, 192, 384, 768), depths=(3, 3, 9, 3), neck_dim=2304),
    "vic-s": ArchSpec(dims=(96, 192, 384, 768), depths=(3, 3, 27, 3), neck_dim=2304),
    "vic-b": ArchSpec(dims=(128, 256, 512, 1024), depths=(3, 3, 27, 3), neck_dim=2304),
}

#: Hardware variants change the math so that every op has a DPU kernel (``vic-t-dpu``): LayerNorm
#: becomes BatchNorm (folded into a neighbouring conv at export) and GELU becomes ReLU. They are
#: not exact; they are distilled from the faithful model (``vidconv-finetune``).
VARIANTS: dict[str, dict[str, str]] = {
    "dpu": {"norm": "batch", "act": "relu"},
}


def arch_names() -> list[str]:
    """Every architecture name a user can ask for: the base archs and their hardware variants."""
    return [*ARCHS, *(f"{base}-{variant}" for base in ARCHS for variant in VARIANTS)]


def split_arch(arch: str) -> tuple[str, dict[str, str]]:
    """``vic-t-dpu`` -> (``vic-t``, the variant's settings); a base arch has no settings."""
    for variant, settings in VARIANTS.items():
        base = arch.removesuffix(f"-{variant}")
        if base != arch and base in ARCHS:
            return base, settings
    return arch, {}


def arch_spec(arch: str) -> ArchSpec:
    """Look up an architecture (or a hardware variant's base) by name; a typo gets the closest names."""
    base, _ = split_arch(arch)
    try:
        return ARCHS[base]
    except KeyError:
        close = difflib.get_close_matches(arch, arch_names(), n=2)
        hint = f"did you mean {' or '.join(close)}?" if close else f"choose one of {', '.join(arch_names())}"
        raise UserError(f"unknown architecture {arch!r}: {hint}") from None


def grid_for_frames(frames: int) -> tuple[int, int]:
    """The square collage grid for a frame count (4 -> 2x2, 9 -> 3x3, 16 -> 4x4)."""
    side = math.isqrt(frames)
    if frames < 1 or side * side != frames:
        raise UserError(
            f"{frames} frames do not form a square collage: give the grid explicitly "
            f"(e.g. --grid 2x3 for 6 frames; grid=(2, 3) in Python) or a square number of frames (--frames 4, 9 or 16)"
        )
    return side, side


def parse_grid(text: str | None) -> tuple[int, int] | None:
    """``--grid ROWSxCOLS`` as (rows, columns), each at least 1; ``None`` when not given."""
    if text is None:
        return None
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--grid {text!r} is not ROWSxCOLS: write e.g. --grid 2x3") from None
    if min(rows, cols) < 1:
        raise UserError(f"--grid {text} has no frames: give at least one row and one column, e.g. --grid 2x3")
    return rows, cols


def _pair(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    h, w = value
    return int(h), int(w)


@dataclasses.dataclass(frozen=True)
class ViCConfig:
    """Everything needed to build one VidConv model.

    ``grid`` is (rows, columns) of the collage; frame t sits at row t // columns, column t % columns.
    ``image_size`` is (height, width) of the input frames.
    """

    arch: str
    dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    neck_dim: int
    num_classes: int = 400
    grid: tuple[int, int] = (3, 3)
    image_size: tuple[int, int] = (224, 224)
    neck: bool = True
    drop_path_rate: float = 0.0
    dropout: float = 0.4
    layer_scale_init: float = 1e-6
    temporal_scale_init: float = 1e-2
    norm: str = "layer"
    act: str = "gelu"

    def __post_init__(self) -> None:
        if self.norm not in ("layer", "batch") or self.act not in ("gelu", "relu"):
            raise UserError(
                f"norm {self.norm!r} / act {self.act!r} not supported: norm is 'layer' or 'batch', act 'gelu' or 'relu'"
            )
        for side in self.image_size:
            if side < 32 or side % 32:
                raise UserError(
                    f"image size {self.image_size[0]}x{self.image_size[1]} is not a multiple of 32: "
                    f"use e.g. 224, 256 or 64"
                )
        if min(self.grid) < 1:
            raise UserError(f"grid {self.grid[0]}x{self.grid[1]} has no frames: give at least one row and one column "
                            f"(e.g. --grid 2x3)")
        if self.num_classes < 1:
            raise UserError(f"{self.num_classes} classes: give a positive number (--classes; num_classes in Python)")

    @property
    def frames(self) -> int:
        """Frames in one clip (one collage)."""
        return self.grid[0] * self.grid[1]

    @property
    def stage3_frame_size(self) -> tuple[int, int]:
        """Per-frame feature size entering stage 3 (H/16, W/16): the temporal dilation of stage 3."""
        return self.image_size[0] // 16, self.image_size[1] // 16

    @property
    def stage4_frame_size(self) -> tuple[int, int]:
        """Per-frame feature size in stage 4 (H/32, W/32): the temporal dilation of stage 4 and of the neck."""
        return self.image_size[0] // 32, self.image_size[1] // 32

    def temporal_dilation(self, stage: int) -> tuple[int, int]:
        """Dilation of the temporal depthwise conv in stage 2 or 3 (0-based): the per-frame map size."""
        return self.stage3_frame_size if stage == 2 else self.stage4_frame_size

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViCConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a file from a newer version)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise UserError(f"model config has unknown fields {unknown}: upgrade vidconv-deploy")
        values = dict(data)
        for key in ("dims", "depths", "grid", "image_size"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def make_config(
    arch: str,
    num_classes: int = 400,
    frames: int = 9,
    image_size: int | tuple[int, int] | None = None,
    neck: bool = True,
    grid: tuple[int, int] | None = None,
    **overrides: Any,
) -> ViCConfig:
    """Build a config from an arch name; ``overrides`` may replace dims/depths/neck_dim (tiny test models).

    The image size defaults to the arch's own (224 for the paper's models, 64 for ``vic-nano``).
    """
    spec = arch_spec(arch)
    _, variant = split_arch(arch)
    if grid is None:
        grid = grid_for_frames(frames)
    else:
        grid = _pair(grid)
        if grid[0] * grid[1] != frames:
            raise UserError(f"grid {grid[0]}x{grid[1]} holds {grid[0] * grid[1]} frames, not {frames}: give --grid and "
                            f"--frames in agreement, or only one of them")
    fields: dict[str, Any] = {
        "arch": arch,
        "dims": spec.dims,
        "depths": spec.depths,
        "neck_dim": spec.neck_dim,
        "num_classes": num_classes,
        "grid": grid,
        "image_size": _pair(spec.image_size if image_size is None else image_size),
        "neck": neck,
        **variant,
    }
    fields.update({k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    return ViCConfig(**fields)
