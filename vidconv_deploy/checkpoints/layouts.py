"""The checkpoint layouts we read, as data: how each one's keys map onto our VidConv's keys.

Our module names are Facebook ConvNeXt's (``backbone.downsample_layers``, ``backbone.stages``) plus
``neck`` and ``head``, so the authors' MMAction2 and Facebook's keys map almost one to one; timm and
torchvision rename everything. ImageNet layouts carry no temporal convs, alpha, neck or video head:
those stay initialised (paper section 3.2) and the ImageNet classifier and final norm are dropped.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import torch

KeyRule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]


def _rule(pattern: str, target: str | Callable[[re.Match[str]], str]) -> KeyRule:
    """A key rule: a full-match regex and either a ``re`` replacement template or a function of the match."""
    compiled = re.compile(pattern)
    if isinstance(target, str):
        template = target
        return compiled, lambda m: m.expand(template)
    return compiled, target


@dataclasses.dataclass(frozen=True)
class Layout:
    """One foreign (or our own) key layout.

    ``marker`` matches a key that tells this layout apart; ``rules`` map foreign keys to ours; ``dropped`` are
    foreign keys deliberately unused; ``initialised`` are our keys this layout never provides.
    ``reshape`` names our keys whose tensors need reshaping to our parameter's shape.
    """

    name: str
    description: str
    marker: re.Pattern[str]
    rules: tuple[KeyRule, ...]
    dropped: re.Pattern[str] | None = None
    initialised: re.Pattern[str] | None = None
    reshape: re.Pattern[str] | None = None

    def map_key(self, key: str) -> str | None:
        """Our key for a foreign ``key``, or None when no rule covers it."""
        for pattern, target in self.rules:
            match = pattern.fullmatch(key)
            if match:
                return target(match)
        return None

    def convert(self, key: str, tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """The foreign tensor in our parameter's ``shape`` where this layout stores it differently."""
        if self.reshape is not None and self.reshape.fullmatch(key) and tensor.numel() == shape.numel():
            return tensor.reshape(shape)
        return tensor


#: What an ImageNet ConvNeXt cannot provide: the VidConv additions (paper section 3.2).
_VIDEO_ONLY = re.compile(r"backbone\.stages\.\d+\.\d+\.(dwconv_tem\.(weight|bias)|gamma_tem)|neck\..*|head\..*")

AUTHORS = Layout(
    name="authors-mmaction2",
    description="the authors' MMAction2 VidConv checkpoint (backbone.* + cls_head.*)",
    marker=re.compile(r"cls_head\..*"),
    rules=(
        _rule(r"backbone\.(.*)", r"backbone.\1"),
        _rule(r"cls_head\.temp_conv\.0\.conv\.(.*)", r"neck.conv.\1"),
        _rule(r"cls_head\.temp_conv\.0\.bn\.(.*)", r"neck.bn.\1"),
        _rule(r"cls_head\.fc_cls\.(.*)", r"head.\1"),
    ),
)

FACEBOOK = Layout(
    name="facebook-convnext",
    description="an ImageNet ConvNeXt in Facebook's layout (facebookresearch/ConvNeXt)",
    marker=re.compile(r"downsample_layers\.0\.0\.weight"),
    rules=(_rule(r"((downsample_layers|stages)\..*)", r"backbone.\1"),),
    dropped=re.compile(r"(norm|head)\..*"),
    initialised=_VIDEO_ONLY,
)

_TIMM_BLOCK_NAMES = {"conv_dw": "dwconv", "norm": "norm", "mlp.fc1": "pwconv1", "mlp.fc2": "pwconv2"}

TIMM = Layout(
    name="timm-convnext",
    description="an ImageNet ConvNeXt in timm's layout",
    marker=re.compile(r"stem\.0\.weight"),
    rules=(
        _rule(r"stem\.([01])\.(weight|bias)", r"backbone.downsample_layers.0.\1.\2"),
        _rule(r"stages\.([123])\.downsample\.([01])\.(weight|bias)", r"backbone.downsample_layers.\1.\2.\3"),
        _rule(
            r"stages\.(\d)\.blocks\.(\d+)\.(conv_dw|norm|mlp\.fc1|mlp\.fc2)\.(weight|bias)",
            lambda m: f"backbone.stages.{m[1]}.{m[2]}.{_TIMM_BLOCK_NAMES[m[3]]}.{m[4]}",
        ),
        _rule(r"stages\.(\d)\.blocks\.(\d+)\.gamma", r"backbone.stages.\1.\2.gamma"),
    ),
    dropped=re.compile(r"head\..*"),
    initialised=_VIDEO_ONLY,
)

_TORCHVISION_BLOCK_NAMES = {"0": "dwconv", "2": "norm", "3": "pwconv1", "5": "pwconv2"}

TORCHVISION = Layout(
    name="torchvision-convnext",
    description="an ImageNet ConvNeXt in torchvision's layout",
    marker=re.compile(r"features\.0\.0\.weight"),
    rules=(
        _rule(r"features\.0\.([01])\.(weight|bias)", r"backbone.downsample_layers.0.\1.\2"),
        _rule(
            r"features\.([246])\.([01])\.(weight|bias)",
            lambda m: f"backbone.downsample_layers.{int(m[1]) // 2}.{m[2]}.{m[3]}",
        ),
        _rule(
            r"features\.([1357])\.(\d+)\.block\.([0235])\.(weight|bias)",
            lambda m: f"backbone.stages.{int(m[1]) // 2}.{m[2]}.{_TORCHVISION_BLOCK_NAMES[m[3]]}.{m[4]}",
        ),
        _rule(
            r"features\.([1357])\.(\d+)\.layer_scale",
            lambda m: f"backbone.stages.{int(m[1]) // 2}.{m[2]}.gamma",
        ),
    ),
    dropped=re.compile(r"classifier\..*"),
    initialised=_VIDEO_ONLY,
    reshape=re.compile(r"backbone\.stages\.\d+\.\d+\.gamma"),  # torchvision keeps layer scale as [C, 1, 1]
)

OURS = Layout(
    name="vidconv",
    description="a vidconv-deploy checkpoint (safetensors + model config)",
    marker=re.compile(r"neck\.conv\.weight|head\.weight"),  # beside backbone.* keys
    rules=(_rule(r"(.*)", r"\1"),),
)

IMAGENET_LAYOUTS = (FACEBOOK, TIMM, TORCHVISION)


def detect_layout(keys: list[str]) -> Layout | None:
    """The layout ``keys`` are in; None when no known layout fits.

    Keys under ``backbone.`` are the authors' (with ``cls_head.*`` or backbone only) or ours (with
    ``neck.*``/``head.*``: a plain ``torch.save(model.state_dict())``). Facebook's ImageNet keys
    also have ``head.weight``, but no ``backbone.`` prefix.
    """
    if any(k.startswith("backbone.") for k in keys):
        if any(AUTHORS.marker.fullmatch(k) for k in keys):
            return AUTHORS
        return OURS if any(OURS.marker.fullmatch(k) for k in keys) else AUTHORS
    for layout in IMAGENET_LAYOUTS:
        if any(layout.marker.fullmatch(k) for k in keys):
            return layout
    return None
