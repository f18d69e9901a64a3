"""``vidconv-export``: build or load a VidConv, rewrite it, export it and carry it to a target.

Targets: ``onnx`` (exact standard-op graphs and the streaming split), ``dpu-<board>`` (the DPU
variant lowered, checked, quantized with vai_q_pytorch's arithmetic, the integer reference and
golden vectors, the Vitis AI compile step and the board dir) and ``finn-<board>`` (the Brevitas
FINN variant at ``--bits``, QONNX, finn-plus streamlining, HW layers, folding to ``--fps``,
resource estimates against the board, the bit-exact chain and the ``finn build`` step). With no
arguments it runs the embedded default: the shipped demo model ``vic-nano`` to ``onnx``;
``--target dpu-kv260`` or ``finn-kv260`` alone takes the shipped ``vic-nano-dpu`` and synthetic
calibration videos.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.table import Table

from vidconv_deploy.checkpoints import load_model
from vidconv_deploy.cli.common import run_main
from vidconv_deploy.cli.info import parse_grid
from vidconv_deploy.dpu.boards import dpu_targets
from vidconv_deploy.errors import UserError
from vidconv_deploy.export.bundle import MANIFEST, Bundle
from vidconv_deploy.export.pipeline import bundle_dir, export_onnx_bundle
from vidconv_deploy.finn.boards import finn_targets
from vidconv_deploy.finn.checkpoint import finn_metadata
from vidconv_deploy.models.config import arch_names, split_arch
from vidconv_deploy.models.variants import init_variant
from vidconv_deploy.models.vidconv import VidConv, build_model
from vidconv_deploy.models.zoo import model_card, shipped_weights

DEFAULT_SEED = 0
#: The FINN flow starts from the DPU variant too: its BatchNorm/ReLU map onto FINN's tensor for tensor.
DEFAULT_ARCH = {"onnx": "vic-nano", "dpu": "vic-nano-dpu", "finn": "vic-nano-dpu"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vidconv-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="onnx", help="onnx, dpu-<board> or finn-<board> (default: onnx)")
    parser.add_argument("--arch", help=f"architecture: {', '.join(arch_names())} "
                                       f"(default: the shipped vic-nano, or vic-nano-dpu for dpu-*/finn-* targets)")
    parser.add_argument("--checkpoint", type=Path, help="weights: authors' MMAction2 .pth, ImageNet ConvNeXt, vidconv "
                                                        ".safetensors, or a FINN checkpoint from vidconv-finetune --qat")
    parser.add_argument("--frames", type=int, default=9, help="frames per clip (default 9)")
    parser.add_argument("--grid", help="collage grid ROWSxCOLS when frames is not a square")
    parser.add_argument("--image-size", type=int, help="frame size, a multiple of 32 (default: the arch's, 224 or 64)")
    parser.add_argument("--classes", type=int, default=400, help="number of classes of a randomly initialised model (default 400)")
    parser.add_argument("--no-neck", action="store_true", help="model without the dilated neck conv")
    parser.add_argument("--calib", type=Path, help="calibration videos: a dataset folder or a folder of videos (dpu/finn targets)")
    parser.add_argument("--calib-clips", type=int, default=16, help="calibration clips (default 16)")
    parser.add_argument("--eval", type=Path, help="dataset folder: score its test split and put accuracy in the report")
    parser.add_argument("--bits", default="w4a4", help="FINN weight/activation bits wXaY (default w4a4)")
    parser.add_argument("--fps", type=float, help="FINN folding target in clips per second (default: fully folded, smallest)")
    parser.add_argument("--out", type=Path, default=Path("build"), help="output folder (default build/)")
    return parser.parse_args(argv)


def target_family(name: str) -> str:
    """``onnx``, ``dpu`` or ``finn``; an unknown target is a one-line error with suggestions."""
    families = {"onnx": ["onnx"], "dpu": dpu_targets(), "finn": finn_targets()}
    for family, names in families.items():
        if name in names:
            return family
    every = [n for names in families.values() for n in names]
    close = difflib.get_close_matches(name, every, n=2)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise UserError(f"unknown target {name!r}: {hint}available: {', '.join(every)}")


def load_weights(args: argparse.Namespace, family: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model to export and a record of where its weights came from."""
    arch = args.arch or DEFAULT_ARCH[family]
    # A random FINN source gets layer scale 1: with ConvNeXt's 1e-6 every block is an identity and the
    # calibrated scales put values exactly on rounding ties, where FINN and Brevitas round differently.
    random_init = {"layer_scale_init": 1.0} if family == "finn" else {}

    def build(**init: float) -> VidConv:
        return build_model(arch, num_classes=args.classes, frames=args.frames, image_size=args.image_size,
                           neck=not args.no_neck, grid=parse_grid(args.grid), **init)

    checkpoint = args.checkpoint
    # finn-*: the shipped QAT-trained FINN model at these bits if there is one, else the float DPU variant.
    shipped_finn = shipped_weights(f"vic-nano-finn-{args.bits.lower()}") if family == "finn" else None
    if checkpoint is None and args.arch is None:
        checkpoint = shipped_finn or shipped_weights(arch)
    if checkpoint is not None and finn_metadata(checkpoint) is not None:
        if family != "finn":
            raise UserError(f"{checkpoint} is a FINN checkpoint (vidconv-finetune --qat): export it with --target finn-<board>")
        return load_finn_weights(checkpoint, shipped=checkpoint == shipped_finn)
    if checkpoint is not None:
        model, report = load_model(checkpoint, build)
        weights = {"source": str(checkpoint), "layout": report.layout, "report": report.summary()}
        if checkpoint == shipped_weights(arch):
            weights["source"] = f"shipped demo weights models/{checkpoint.name} (model card models/{arch}.yaml)"
    else:
        torch.manual_seed(DEFAULT_SEED)
        model = build(**random_init)
        weights = {"source": f"random initialisation (seed {DEFAULT_SEED}{', layer scale 1' if random_init else ''}): "
                             f"no --checkpoint given"}
    if family == "dpu" and not split_arch(model.cfg.arch)[1]:
        model, note = to_dpu_variant(model)
        weights["conversion"] = note
    return model, weights


def load_finn_weights(checkpoint: Path, shipped: bool) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A QAT-trained FINN model, used as is, and the record of its weights (with its float teacher if found)."""
    from vidconv_deploy.finn.checkpoint import load_finn_checkpoint

    model = load_finn_checkpoint(checkpoint)
    where = f"shipped demo weights models/{checkpoint.name}" if shipped else str(checkpoint)
    weights = {"source": f"{where} (FINN variant {model.bits})"}
    teacher = finn_teacher(checkpoint)
    if teacher is not None:
        weights["teacher"] = str(teacher)
    return model, weights


def finn_teacher(checkpoint: Path) -> Path | None:
    """The float model a FINN checkpoint was QAT-trained from, as its model card (``vidconv-finetune --qat``) names
    it: that file if it exists, else the shipped weights of the card's teacher arch; None if neither is found."""
    card_path = checkpoint.with_suffix(".yaml")
    if not card_path.is_file():
        return None
    source = (yaml.safe_load(card_path.read_text(encoding="utf-8")) or {}).get("distilled_from", {})
    named = Path(source.get("teacher", ""))
    return named if named.is_file() else shipped_weights(source.get("arch", ""))


def to_dpu_variant(model: VidConv) -> tuple[VidConv, str]:
    """A faithful model's DPU variant initialised from its weights (not distilled: say so)."""
    variant, initialised = init_variant(model, "dpu")
    note = (f"{model.cfg.arch} converted to {variant.cfg.arch} (LayerNorm -> BatchNorm with unit statistics, GELU -> ReLU) "
            f"without distillation: accuracy is NOT that of the faithful model; run vidconv-finetune --teacher CKPT "
            f"--student {variant.cfg.arch} first ({len(initialised)} BatchNorm statistics initialised)")
    Console(stderr=True).print(f"[yellow]warning:[/] {note}")
    return variant.eval(), note


def class_names(args: argparse.Namespace, model: VidConv) -> list[str]:
    """Class names from the shipped model card, else the calibration/eval dataset's classes.txt, else class_<i>."""
    names = model_card(model.cfg.arch).get("data", {}).get("classes", [])
    for folder in (args.eval, args.calib):
        if not names and folder is not None and (folder / "classes.txt").is_file():
            names = (folder / "classes.txt").read_text(encoding="utf-8").split()
    n = model.cfg.num_classes
    return list(names) if len(names) == n else [f"class_{i}" for i in range(n)]


def print_artifacts(bundle: Bundle, title: str) -> None:
    table = Table(title=title)
    for column in ("artifact", "file", "bytes"):
        table.add_column(column, justify="right" if column == "bytes" else "left")
    for role, art in bundle.artifacts.items():
        if "dir" in art:
            table.add_row(role, art["dir"] + "/", f"{sum(f['bytes'] for f in art['files'].values()):,} in {len(art['files'])} files")
        else:
            table.add_row(role, art["file"], f"{art['bytes']:,}")
    table.add_row("manifest", MANIFEST, "")
    Console().print(table)


def record_report(bundle: Bundle) -> None:
    """Put the report both targets write (Markdown, HTML, the plots beside them) into the manifest."""
    bundle.record_file("report", "report.md")
    bundle.record_file("report_html", "report.html")
    bundle.record_dir("report_files", "report_files")


def export_dpu(args: argparse.Namespace, model: VidConv, weights: dict[str, Any], out: Path) -> bool:
    """The DPU pipeline + report; returns whether the graphs comply with the target."""
    from vidconv_deploy.data.calibration import calibration_clips
    from vidconv_deploy.export.dpu_pipeline import export_dpu_bundle
    from vidconv_deploy.export.dpu_report import dpu_report

    cfg = model.cfg
    clips, source, skips = calibration_clips(args.calib, cfg.frames, cfg.image_size, args.calib_clips)
    bundle = Bundle(out, args.target)  # only now: bad calibration input leaves no bundle behind
    result = export_dpu_bundle(model, bundle, args.target, clips, class_names(args, model), source)
    facts = {"arch": cfg.arch, "config": cfg.to_dict(), "weights": weights}
    accuracy = None
    if args.eval is not None:
        accuracy = evaluate_into(bundle, args.eval, model=facts, verification=result.verification, compliant=result.compliant)
    dpu_report(bundle, result, {"arch": cfg.arch, "weights": weights["source"]}, accuracy)
    record_report(bundle)
    bundle.finish(model=facts, verification=result.verification, compliant=result.compliant,
                  calibration={"source": source, "skipped": skips.to_dict()}, reference=result.reference,
                  compile=result.compile, throughput=result.throughput, accuracy=accuracy)
    ref = " ".join(f"{g} {'bit-exact' if r['bit_exact_vs_onnxruntime'] else 'NOT bit-exact'}"
                   for g, r in result.reference.items())
    Console().print(f"{args.target} rules: {'compliant, every op on the DPU' if result.compliant else 'NOT compliant, see report.md'}; "
                    f"integer reference vs ONNX Runtime: {ref}; xmodel: "
                    f"{'built' if result.compile['ran'] else 'not built here (see compile/docker_run.sh)'}")
    print_artifacts(bundle, f"{cfg.arch} -> {args.target}: {out}")
    return result.compliant


def export_finn(args: argparse.Namespace, model: torch.nn.Module, weights: dict[str, Any], out: Path) -> bool:
    """The FINN flow; returns whether every node mapped to a HW layer and the chain is bit-exact."""
    from vidconv_deploy.data.calibration import calibration_clips
    from vidconv_deploy.finn.document import finn_document
    from vidconv_deploy.finn.pipeline import export_finn_bundle

    cfg = model.cfg
    clips, source, skips = calibration_clips(args.calib, cfg.frames, cfg.image_size, args.calib_clips)
    bundle = Bundle(out, args.target)  # only now: bad calibration input leaves no bundle behind
    teacher = load_model(weights["teacher"])[0].eval() if "teacher" in weights else None
    result = export_finn_bundle(bundle, model, args.target, args.bits, args.fps,
                                [torch.from_numpy(c) for c in clips], DEFAULT_SEED, teacher)
    facts = {"arch": cfg.arch, "config": cfg.to_dict(), "weights": weights}
    ok = result["mapped"] and result["bit_exact"]
    accuracy = None
    if args.eval is not None and ok:
        accuracy = evaluate_into(bundle, args.eval, model=facts, **result["manifest"])
    finn_document(bundle, result["report"], {"arch": cfg.arch, "weights": weights["source"]}, accuracy)
    record_report(bundle)
    bundle.finish(model=facts, calibration={"source": source, "skipped": skips.to_dict()}, accuracy=accuracy,
                  **result["manifest"])
    report = result["report"]
    Console().print(f"{args.target} {args.bits}: {'every node mapped to a HW layer' if result['mapped'] else 'UNMAPPED nodes, see finn_report.json'}; "
                    f"Brevitas = FINN streamlined = FINN HW: {'bit-exact' if result['bit_exact'] else 'NOT bit-exact'}; "
                    f"{'fits' if result['fits'] else 'does NOT fit'} the {report['board']['name']} budget; "
                    f"bitfile: {'built' if result['build']['built'] else 'not built here (see finn_build/docker_run.sh)'}")
    if accuracy:
        Console().print("accuracy (test top-1): " + ", ".join(f"{row['model']} {row['top1']:.1f}%" for row in accuracy))
    print_artifacts(bundle, f"{cfg.arch} -> {args.target}: {out}")
    return ok


def evaluate_into(bundle: Bundle, data: Path, **manifest: Any) -> list[dict]:
    """Score the bundle's classifiers on ``data``'s test split: vidconv-eval reads the bundle through its
    manifest, so a provisional one with ``manifest``'s fields is written first (the caller's finish replaces it)."""
    from vidconv_deploy.cli.evaluate import evaluate_bundle

    bundle.finish(**manifest)
    return evaluate_bundle(bundle.directory, data)["orders"]["normal"]


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    family = target_family(args.target)
    if family == "finn":  # a missing finn-plus or a typo in --bits fails before any work
        from vidconv_deploy.finn.finn_env import require_finn
        from vidconv_deploy.finn.model import Bits

        require_finn()
        Bits.parse(args.bits)
    console = Console(stderr=True)
    model, weights = load_weights(args, family)
    console.print(f"weights: {weights.get('report', weights['source'])}")
    out = bundle_dir(args.out, model.cfg.arch, args.target)
    if family == "dpu":
        return 0 if export_dpu(args, model, weights, out) else 1
    if family == "finn":
        return 0 if export_finn(args, model, weights, out) else 1
    bundle = Bundle(out, args.target)
    verification, compliant = export_onnx_bundle(model, bundle, rule_set="onnx")
    bundle.finish(model={"arch": model.cfg.arch, "config": model.cfg.to_dict(), "weights": weights},
                  verification=verification, compliant=compliant)
    print_artifacts(bundle, f"{model.cfg.arch} -> {args.target}: {out}")
    figures = ", ".join(f"{k} {v:.1e}" for k, v in verification.items() if k.endswith("_vs_torch"))
    Console().print(f"relative error vs PyTorch: {figures} (tolerance {verification['tolerance']:.0e}); "
                    f"onnx rules: {'compliant' if compliant else 'NOT compliant, see compliance.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("vidconv-export", _main, argv)
