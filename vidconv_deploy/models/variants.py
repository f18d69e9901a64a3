"""Hardware variants initialised from a faithful model: the starting point of distillation."""

from __future__ import annotations

from vidconv_deploy.errors import UserError
from vidconv_deploy.models.config import VARIANTS, split_arch
from vidconv_deploy.models.vidconv import VidConv, build_model


def init_variant(model: VidConv, variant: str = "dpu") -> tuple[VidConv, list[str]]:
    """``model``'s ``variant`` (e.g. vic-t -> vic-t-dpu) with every same-named tensor copied over.

    LayerNorm's affine parameters become BatchNorm's; the BatchNorm statistics start at (0, 1) and
    are what distillation learns first. Returns the variant and the names left initialised.
    """
    base, settings = split_arch(model.cfg.arch)
    if settings:
        raise UserError(f"{model.cfg.arch} is already a hardware variant: give the faithful model ({base}) as the teacher")
    if variant not in VARIANTS:
        raise UserError(f"unknown variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    fields = {k: v for k, v in model.cfg.to_dict().items() if k not in ("arch", "norm", "act")}
    student = build_model(f"{base}-{variant}", **fields)
    result = student.load_state_dict(model.state_dict(), strict=False)
    if result.unexpected_keys:
        raise UserError(f"{model.cfg.arch} has tensors the {variant} variant lacks: {result.unexpected_keys[:3]}")
    return student, list(result.missing_keys)
