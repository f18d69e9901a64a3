"""``vic-nano-finn``: a Brevitas-quantized VidConv whose every layer becomes a FINN HW layer.

What changes against the float ``vic-*-dpu`` variant, and why (each choice measured with
finn-plus 1.6.1 on this model; tests/test_finn_flow.py checks the mapping layer by layer):

- Integer weights and activations at ``--bits wXaY``; the stem's and the head's weights, the input
  and the logits stay 8-bit (the usual FINN practice: first and last layers are the sensitive ones).
- BatchNorm and QuantReLU (not LayerNorm/GELU): streamlining folds BatchNorm into thresholds, and
  FINN has no GELU HW layer off Versal parts.
- Every residual Add sums two tensors quantized by the *same* quantizer module, so streamlining moves
  the shared scale past the Add and FINN adds two integer streams (ElementwiseAdd).
- The layer scale gamma and the temporal alpha are folded into the convs before them (``from_float``).
- The temporal term: dilated depthwise conv (kernel = grid, dilation = frame size, no padding)
  becomes FMPadding-free SWG + VVAU; its frame-sized output is tiled back over the collage as
  nearest upsampling by the grid followed by a fixed permutation (Reshape-Transpose-Reshape, a FINN
  Shuffle). Tiling as ``Concat`` of one tensor with itself is what we tried first: finn-plus's
  streamlining then rewires only the first of the repeated inputs and leaves the graph broken.
- The head averages with ``TruncAvgPool2d`` (FINN's Pool) whose output width is the accumulator's,
  so Brevitas and FINN shift by the same amount (Brevitas left-aligns narrower sums to 8 bits, FINN
  does not).
- The clip is split for streaming like the ONNX target: ``early`` runs per frame (the FINN graph
  sees a stream of frames), the host tiles the frames' integer features into the collage, ``later``
  runs once per clip. One graph holding nine copies of the early net took finn-plus minutes per
  pass and nine times the on-chip weights.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from typing import Any

import brevitas.nn as qnn
import torch
import torch.nn.functional as F
from brevitas.quant import Int8ActPerTensorFixedPoint, Int8ActPerTensorFloat, Int8WeightPerChannelFloat
from brevitas.quant.scaled_int import TruncTo8bit
from torch import nn

from vidconv_deploy.errors import UserError
from vidconv_deploy.models.collage import frames_to_collage
from vidconv_deploy.models.config import ViCConfig

# brevitas.graph (calibration, export) warns on import that an optional CUDA kernel package is
# missing; nothing here uses it, and the line would look like a problem in every FINN run.
warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")

#: Bit widths of the layers that stay 8-bit whatever ``--bits`` says (input, stem, head, logits).
EDGE_BITS = 8


@dataclasses.dataclass(frozen=True)
class Bits:
    """Weight and activation bit widths, spelled ``w4a4`` on the command line."""

    weight: int
    act: int

    @classmethod
    def parse(cls, text: str) -> Bits:
        match = re.fullmatch(r"w(\d+)a(\d+)", text.strip().lower())
        if not match or not all(2 <= int(g) <= 8 for g in match.groups()):
            raise UserError(f"bits {text!r} not understood: write wXaY with X and Y from 2 to 8, e.g. w4a4 or w8a8")
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"w{self.weight}a{self.act}"


def value(x: Any) -> torch.Tensor:
    """The float value of a Brevitas QuantTensor, or the tensor itself (during ONNX export it is plain)."""
    return x.value if hasattr(x, "value") else x


def qconv(cin: int, cout: int, kernel: int | tuple[int, int], bits: int, **kw: Any) -> qnn.QuantConv2d:
    """A conv with per-channel scaled integer weights (FINN absorbs the scales into thresholds)."""
    return qnn.QuantConv2d(cin, cout, kernel, weight_quant=Int8WeightPerChannelFloat, weight_bit_width=bits, **kw)


def qact(bits: int) -> qnn.QuantIdentity:
    """A signed per-tensor activation quantizer (becomes a MultiThreshold, then a Thresholding layer)."""
    return qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, bit_width=bits, return_quant_tensor=True)


def tile_to_collage(frame: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Repeat a frame-sized map over the collage, written as ops FINN maps (nearest upsample + shuffle).

    Upsampling by the grid gives ``up[y*rows + r, x*cols + c] = t[y, x]``; reading it as
    ``(y, r, x, c)`` and moving the grid axes first gives the tile ``[r*h + y, c*w + x] = t[y, x]``.
    The permutation is written channels-last so that FINN sees one Reshape-Transpose-Reshape.
    """
    rows, cols = grid
    up = F.interpolate(frame, scale_factor=(rows, cols), mode="nearest")
    b, c, hh, ww = up.shape
    h, w = hh // rows, ww // cols
    x = up.permute(0, 2, 3, 1).reshape(b, h, rows, w, cols, c).permute(0, 2, 1, 4, 3, 5).reshape(b, hh, ww, c)
    return x.permute(0, 3, 1, 2)


class FinnBlock(nn.Module):
    """ConvNeXt block (or VidConv block when ``temporal``) with FINN-friendly quantizers.

    ``y = quant_in(x)``; mixer ``m = dwconv(y)`` (+ ``tile(dwconv_tem(y))``, both through the shared
    ``quant_mix``); ``out = y + quant_in(pwconv2(act(pwconv1(quant_mid(norm(m))))))``.
    """

    def __init__(self, dim: int, bits: Bits, grid: tuple[int, int] | None = None,
                 frame_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.grid = grid
        self.quant_in = qact(bits.act)
        self.dwconv = qconv(dim, dim, 7, bits.weight, padding=3, groups=dim)
        if grid is not None:
            self.dwconv_tem = qconv(dim, dim, grid, bits.weight, dilation=frame_size, groups=dim)
            self.quant_mix = qact(bits.act)
        self.norm = nn.BatchNorm2d(dim)
        self.quant_mid = qact(bits.act)
        self.pwconv1 = qconv(dim, 4 * dim, 1, bits.weight)
        self.act = qnn.QuantReLU(bit_width=bits.act, return_quant_tensor=True)
        self.pwconv2 = qconv(4 * dim, dim, 1, bits.weight)

    def forward(self, x: Any) -> Any:
        y = self.quant_in(x)
        mixed = self.dwconv(y)
        if self.grid is not None:
            temporal = self.quant_mix(self.dwconv_tem(y))
            mixed = self.quant_mix(mixed) + tile_to_collage(value(temporal), self.grid)
        branch = self.pwconv2(self.act(self.pwconv1(self.quant_mid(self.norm(mixed)))))
        return y + self.quant_in(branch)


class FinnDown(nn.Module):
    """BatchNorm -> quantizer -> 2x2/2 conv (ConvNeXt's downsample between stages)."""

    def __init__(self, cin: int, cout: int, bits: Bits) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.quant = qact(bits.act)
        self.conv = qconv(cin, cout, 2, bits.weight, stride=2)

    def forward(self, x: Any) -> Any:
        return self.conv(self.quant(self.norm(x)))


class FinnViC(nn.Module):
    """The FINN variant of a VidConv config: ``early`` per frame, host collage, ``later`` per clip.

    ``forward`` takes clips ``(B, L, 3, H, W)`` and returns the logits as a Brevitas QuantTensor
    (8-bit); ``.int()`` gives the integers the FINN accelerator outputs.
    """

    def __init__(self, cfg: ViCConfig, bits: Bits) -> None:
        super().__init__()
        if not cfg.neck:
            raise UserError("the FINN variant needs the neck (its pool makes the head's input one vector): build with neck=True")
        self.cfg, self.bits = cfg, bits
        dims, depths = cfg.dims, cfg.depths
        self.input_quant = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, bit_width=EDGE_BITS,
                                             return_quant_tensor=True)
        self.stem = qconv(3, dims[0], 4, EDGE_BITS, stride=4)
        self.stem_norm = nn.BatchNorm2d(dims[0])
        self.stages = nn.ModuleList()
        self.downs = nn.ModuleList([nn.Identity()])  # index i = the downsample before stage i
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            if i:
                self.downs.append(FinnDown(dims[i - 1], dim, bits))
            grid, frame = (cfg.grid, cfg.temporal_dilation(i)) if i >= 2 else (None, None)
            self.stages.append(nn.Sequential(*[FinnBlock(dim, bits, grid, frame) for _ in range(depth)]))
        self.collage_quant = qact(bits.act)
        self.neck_quant = qact(bits.act)
        self.neck = qconv(dims[3], cfg.neck_dim, cfg.grid, bits.weight, dilation=cfg.stage4_frame_size, bias=False)
        self.neck_bn = nn.BatchNorm2d(cfg.neck_dim)
        self.neck_act = qnn.QuantReLU(bit_width=bits.act, return_quant_tensor=True)
        pool = cfg.stage4_frame_size
        # FINN's QuantAvgPool2d and Brevitas agree when the output keeps the accumulator's width
        # (finn/transformation/qonnx/infer_quant_avg_pool_2d.py needs a FLOOR Trunc).
        acc_bits = bits.act + math.ceil(math.log2(pool[0] * pool[1]))
        self.pool = qnn.TruncAvgPool2d(kernel_size=pool, trunc_quant=TruncTo8bit.let(bit_width=min(EDGE_BITS, acc_bits)))
        self.head = qnn.QuantLinear(cfg.neck_dim, cfg.num_classes, bias=True, weight_quant=Int8WeightPerChannelFloat,
                                    weight_bit_width=EDGE_BITS)
        self.out_quant = qnn.QuantIdentity(act_quant=Int8ActPerTensorFloat, bit_width=EDGE_BITS, return_quant_tensor=True)

    def early(self, frames: torch.Tensor) -> Any:
        """``(N, 3, H, W)`` frames -> quantized ``(N, C3, H/16, W/16)`` features (what crosses to the host)."""
        x = self.stem_norm(self.stem(self.input_quant(frames)))
        x = self.stages[1](self.downs[1](self.stages[0](x)))
        return self.collage_quant(self.downs[2](x))

    def later(self, collage: torch.Tensor) -> Any:
        """Channels-last collage ``(B, rows*h, cols*w, C3)`` -> quantized logits ``(B, classes)``."""
        x = value(self.collage_quant(collage)).permute(0, 3, 1, 2)
        x = self.stages[3](self.downs[3](self.stages[2](x)))
        x = self.neck_act(self.neck_bn(self.neck(self.neck_quant(x))))
        return self.out_quant(self.head(self.pool(x).flatten(1)))

    def collage(self, features: torch.Tensor) -> torch.Tensor:
        """The host's step: ``(B*L, C, h, w)`` frame features -> channels-last collage ``(B, rows*h, cols*w, C)``."""
        return frames_to_collage(features, self.cfg.grid).permute(0, 2, 3, 1)

    def forward(self, clips: torch.Tensor) -> Any:
        cfg = self.cfg
        if clips.ndim != 5 or tuple(clips.shape[1:]) != (cfg.frames, 3, *cfg.image_size):
            raise UserError(f"input of shape {tuple(clips.shape)} does not fit this model: expected "
                            f"(batch, {cfg.frames}, 3, {cfg.image_size[0]}, {cfg.image_size[1]})")
        features = self.early(clips.flatten(0, 1))
        return self.later(self.collage(value(features)))


class GraphPart(nn.Module):
    """One exported graph of a FinnViC (``early`` or ``later``), for ONNX export."""

    def __init__(self, model: FinnViC, part: str) -> None:
        super().__init__()
        self.model, self.part = model, part

    def forward(self, x: torch.Tensor) -> Any:
        return getattr(self.model, self.part)(x)


def build_finn_model(cfg: ViCConfig, bits: Bits | str = "w4a4") -> FinnViC:
    """A randomly initialised FINN model for ``cfg`` (use :func:`from_float` to start from a float model)."""
    return FinnViC(cfg, Bits.parse(bits) if isinstance(bits, str) else bits)


@torch.no_grad()
def _copy_conv(dst: nn.Conv2d | nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    dst.weight.copy_(weight.reshape(dst.weight.shape))
    if dst.bias is not None:
        dst.bias.copy_(bias if bias is not None else torch.zeros_like(dst.bias))


@torch.no_grad()
def _copy_norm(dst: nn.BatchNorm2d, src: nn.Module) -> None:
    """BatchNorm from BatchNorm (all statistics) or from LayerNorm (affine only: statistics need re-estimating)."""
    dst.weight.copy_(src.weight)
    dst.bias.copy_(src.bias)
    if isinstance(src, nn.BatchNorm2d):
        dst.running_mean.copy_(src.running_mean)
        dst.running_var.copy_(src.running_var)
        dst.eps = src.eps


@torch.no_grad()
def _copy_block(dst: FinnBlock, src: nn.Module) -> None:
    _copy_conv(dst.dwconv, src.dwconv.weight, src.dwconv.bias)
    if dst.grid is not None:
        alpha = src.gamma_tem.view(-1, 1, 1, 1)  # temporal alpha folded into the dilated conv
        _copy_conv(dst.dwconv_tem, src.dwconv_tem.weight * alpha, src.dwconv_tem.bias * src.gamma_tem)
    _copy_norm(dst.norm, src.norm)
    _copy_conv(dst.pwconv1, src.pwconv1.weight, src.pwconv1.bias)
    gamma = src.gamma.view(-1, 1)  # layer scale folded into the second pointwise conv
    _copy_conv(dst.pwconv2, src.pwconv2.weight * gamma, src.pwconv2.bias * src.gamma)


def from_float(float_model: nn.Module, bits: Bits | str = "w4a4") -> FinnViC:
    """Initialise a FINN model from a float VidConv (``vic-nano-dpu`` maps tensor for tensor).

    From a faithful model (LayerNorm + GELU) the convs and linears copy over and the LayerNorm
    affine becomes the BatchNorm affine; its statistics must then be re-estimated (:func:`calibrate`
    with ``reestimate_bn=True``) and the model fine-tuned (``vidconv-finetune --qat``).
    """
    src_cfg: ViCConfig = float_model.cfg
    cfg = dataclasses.replace(src_cfg, norm="batch", act="relu")
    model = build_finn_model(cfg, bits)
    backbone = float_model.backbone
    stem_conv, stem_norm = backbone.downsample_layers[0]
    _copy_conv(model.stem, stem_conv.weight, stem_conv.bias)
    _copy_norm(model.stem_norm, stem_norm)
    for i in range(4):
        if i:
            norm, conv = backbone.downsample_layers[i]
            _copy_norm(model.downs[i].norm, norm)
            _copy_conv(model.downs[i].conv, conv.weight, conv.bias)
        for dst, src in zip(model.stages[i], backbone.stages[i]):
            _copy_block(dst, src)
    _copy_conv(model.neck, float_model.neck.conv.weight, None)
    _copy_norm(model.neck_bn, float_model.neck.bn)
    _copy_conv(model.head, float_model.head.weight, float_model.head.bias)
    return model


@torch.no_grad()
def calibrate(model: FinnViC, clips: list[torch.Tensor], reestimate_bn: bool = False) -> FinnViC:
    """Set the activation quantizers' scales from ``clips`` (Brevitas calibration mode); eval mode after.

    BatchNorms stay in eval mode while the scales are collected, so a trained model's statistics are
    kept. ``reestimate_bn`` first replaces them by the clips' own, in a float pass (needed when the
    norms came from LayerNorms).
    """
    from brevitas.graph.calibrate import calibration_mode, quantization_status_manager

    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if reestimate_bn:
        float_pass = quantization_status_manager(model, disable_act_quant=True, disable_weight_quant=True,
                                                 disable_bias_quant=True, call_act_quantizer_impl=False,
                                                 is_training=False)
        momenta = [norm.momentum for norm in norms]
        with float_pass:
            for norm in norms:
                norm.reset_running_stats()
                norm.momentum = None  # cumulative average over the clips
                norm.train()
            for clip in clips:
                model(clip)
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
    with calibration_mode(model):
        for norm in norms:
            norm.eval()
        for clip in clips:
            model(clip)
    model.eval()
    model(clips[0])  # a quantized pass refreshes the I/O metadata Brevitas caches for export (TruncAvgPool2d)
    return model
