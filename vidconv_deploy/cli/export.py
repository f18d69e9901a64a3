"""``vidconv-export``: build or load a VidConv, rewrite it, export it to ONNX and check it for a target.

With no arguments it runs the embedded default: ViC-T, 9 frames at 224x224, target ``onnx``,
into ``build/vic-t-onnx/``.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from vidconv_deploy.checkpoints import load_model
from vidconv_deploy.cli.common import run_main
from vidconv_deploy.cli.info import parse_grid
from vidconv_deploy.errors import UserError
from vidconv_deploy.export.bundle import MANIFEST, Bundle
from vidconv_deploy.export.pipeline import bundle_dir, export_onnx_bundle
from vidconv_deploy.models.config import ARCHS
from vidconv_deploy.models.vidconv import VidConv, build_model

#: Export targets and the rule set each one's deploy graph is checked against.
EXPORT_TARGETS = {"onnx": "onnx"}
#: Targets the checker knows whose export pipelines are still to come.
PLANNED_TARGETS = ("dpu-zcu102", "dpu-zcu104", "dpu-kv260", "dpu-vck190", "dpu-vek280", "finn-kv260", "finn-zcu104")
DEFAULT_SEED = 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vidconv-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="onnx", help="export target (default: onnx)")
    parser.add_argument("--arch", default="vic-t", help=f"architecture: {', '.join(ARCHS)} (default vic-t)")
    parser.add_argument("--checkpoint", type=Path, help="weights: authors' MMAction2 .pth, ImageNet ConvNeXt, or vidconv .safetensors")
    parser.add_argument("--frames", type=int, default=9, help="frames per clip (default 9)")
    parser.add_argument("--grid", help="collage grid ROWSxCOLS when frames is not a square")
    parser.add_argument("--image-size", type=int, default=224, help="frame size, a multiple of 32 (default 224)")
    parser.add_argument("--classes", type=int, default=400, help="number of classes (default 400)")
    parser.add_argument("--no-neck", action="store_true", help="model without the dilated neck conv")
    parser.add_argument("--out", type=Path, default=Path("build"), help="output folder (default build/)")
    return parser.parse_args(argv)


def check_target(name: str) -> str:
    """The rule set for export target ``name``; unknown or not-yet-available targets are a one-line error."""
    if name in EXPORT_TARGETS:
        return EXPORT_TARGETS[name]
    available = ", ".join(EXPORT_TARGETS)
    if name in PLANNED_TARGETS:
        raise UserError(f"target {name!r} has no export pipeline yet: use --target {available}, "
                        f"and 'vidconv-check MODEL.onnx --target {name}' to check a graph against it")
    close = difflib.get_close_matches(name, [*EXPORT_TARGETS, *PLANNED_TARGETS], n=2)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise UserError(f"unknown target {name!r}: {hint}available: {available}")


def load_weights(args: argparse.Namespace) -> tuple[VidConv, dict[str, str]]:
    """The model to export and a record of where its weights came from."""

    def build() -> VidConv:
        return build_model(args.arch, num_classes=args.classes, frames=args.frames, image_size=args.image_size,
                           neck=not args.no_neck, grid=parse_grid(args.grid))

    if args.checkpoint is not None:
        model, report = load_model(args.checkpoint, build)
        return model, {"source": str(args.checkpoint), "layout": report.layout, "report": report.summary()}
    torch.manual_seed(DEFAULT_SEED)
    return build(), {"source": f"random initialisation (seed {DEFAULT_SEED}): no --checkpoint given"}


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    rule_set = check_target(args.target)
    console = Console(stderr=True)
    model, weights = load_weights(args)
    console.print(f"weights: {weights.get('report', weights['source'])}")
    out = bundle_dir(args.out, model.cfg.arch, args.target)
    bundle = Bundle(out, args.target)
    verification, compliant = export_onnx_bundle(model, bundle, rule_set=rule_set)
    bundle.finish(model={"arch": model.cfg.arch, "config": model.cfg.to_dict(), "weights": weights},
                  verification=verification, compliant=compliant)
    table = Table(title=f"{model.cfg.arch} -> {args.target}: {out}")
    table.add_column("artifact")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    for role, art in bundle.artifacts.items():
        table.add_row(role, art["file"], f"{art['bytes']:,}")
    table.add_row("manifest", MANIFEST, "")
    Console().print(table)
    figures = ", ".join(f"{k} {v:.1e}" for k, v in verification.items() if k.endswith("_vs_torch"))
    Console().print(f"relative error vs PyTorch: {figures} (tolerance {verification['tolerance']:.0e}); "
                    f"{rule_set} rules: {'compliant' if compliant else 'NOT compliant, see compliance.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("vidconv-export", _main, argv)
