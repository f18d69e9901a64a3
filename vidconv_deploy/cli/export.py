"""vidconv-export: build or load a VidConv, rewrite it, export it and carry it to a target.

Targets (vidconv-export --list-targets): onnx (exact standard-op graphs and the streaming split),
dpu-<board> (the hardware variant lowered, checked, quantized with vai_q_pytorch's arithmetic, the
integer reference and golden vectors, the Vitis AI compile step and the board dir) and
finn-<board> (the Brevitas FINN variant at --bits, QONNX, finn-plus streamlining, HW layers,
folding to --fps, resource estimates against the board, the bit-exact chain and the finn build
step). With no arguments it runs the embedded default: the shipped demo model vic-nano-hard (trained
on the hard synthetic set) to onnx; --target dpu-kv260 or finn-kv260 alone takes the shipped
vic-nano-dpu-hard (or vic-nano-hard-finn-w4a4) and calibration videos made like its training data.
A flag that conflicts with a checkpoint's own config is an error.

Exit codes: 0 all that was asked holds; 1 a verdict failed (not exact, not compliant, not
bit-exact, does not fit the board: --allow-unfit accepts that); 2 bad input or a tool error
(nothing is written, an existing bundle stays as it was).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.table import Table

from vidconv_deploy.atomic import cannot_create_in, nearest_existing
from vidconv_deploy.checkpoints import load_model
from vidconv_deploy.cli.common import run_main
from vidconv_deploy.errors import UserError
from vidconv_deploy.bundle import MANIFEST, read_manifest, remove_dead_leftovers
from vidconv_deploy.finn.checkpoint import finn_metadata
from vidconv_deploy.models.config import arch_names, arch_spec, parse_grid, split_arch
from vidconv_deploy.models.variants import init_variant
from vidconv_deploy.models.vidconv import VidConv, build_model
from vidconv_deploy.models.zoo import model_card, shipped_class_names, shipped_name, shipped_weights, training_data
from vidconv_deploy.targets.export import START_FROM_FIX, Outcome, bundle_dir, export_bundle
from vidconv_deploy.targets.families import add_family_arguments, family, reject_foreign_flags, with_dpu
from vidconv_deploy.targets.registry import Target, get_target, target_names
from vidconv_deploy.targets.steps import check_step_range

DEFAULT_SEED = 0
#: Defaults of the model flags when no checkpoint decides them (None in the parser means "not given").
MODEL_DEFAULTS = {"frames": 9, "classes": 400}
#: Largest model flags taken: beyond them a clip or a head no longer fits in memory (a typo, not a model).
MAX_FRAMES = 256
MAX_IMAGE_SIZE = 2048
MAX_CLASSES = 100_000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidconv-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="onnx", help="a target name (default: onnx); --list-targets shows them all")
    parser.add_argument("--list-targets", action="store_true", help="print every target, what runs here and what needs "
                                                                    "tools absent here, and exit")
    parser.add_argument("--arch", help=f"architecture: {', '.join(arch_names())} (default: the target's shipped model)")
    parser.add_argument("--checkpoint", type=Path, help="weights: authors' MMAction2 .pth, ImageNet ConvNeXt, vidconv "
                                                        ".safetensors, or a FINN checkpoint from vidconv-finetune --qat")
    parser.add_argument("--frames", type=int, help="frames per clip (default 9, or the checkpoint's)")
    parser.add_argument("--grid", help="collage grid ROWSxCOLS when frames is not a square")
    parser.add_argument("--image-size", type=int, help="frame size, a multiple of 32 (default: the arch's, 224 or 64)")
    parser.add_argument("--classes", type=int, help="classes of a randomly initialised model (default 400)")
    parser.add_argument("--no-neck", action="store_true", help="model without the dilated neck conv")
    parser.add_argument("--out", type=Path, default=Path("build"), help="output folder; the bundle goes to "
                                                                        "OUT/<arch>-<target>/ (default build/)")
    parser.add_argument("--start-from", metavar="STEP", help="continue the finished bundle in --out from this step "
                                                             "(the steps before it are kept as they ran)")
    parser.add_argument("--stop-after", metavar="STEP", help="run the steps up to this one; the rest are recorded as not run")
    parser.add_argument("--json", action="store_true", help="print the verdict and the artifact list as JSON on stdout")
    add_family_arguments(parser)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def validate_model_flags(args: argparse.Namespace) -> None:
    """Numbers a model cannot have are one-line errors before anything is loaded."""
    if args.arch is not None:
        arch_spec(args.arch)  # an unknown (or empty) name is an error with the closest names, not the default
    for flag, value, most in (("--frames", args.frames, MAX_FRAMES), ("--classes", args.classes, MAX_CLASSES)):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: give a positive number")
        if value is not None and value > most:
            raise UserError(f"{flag} {value}: give at most {most:,}")
    if args.image_size is not None and (args.image_size < 32 or args.image_size % 32 or args.image_size > MAX_IMAGE_SIZE):
        raise UserError(f"--image-size {args.image_size}: give a multiple of 32 from 32 to {MAX_IMAGE_SIZE} (e.g. 64 or 224)")
    grid = parse_grid(args.grid)
    if grid is not None and grid[0] * grid[1] > MAX_FRAMES:
        raise UserError(f"--grid {args.grid} holds {grid[0] * grid[1]:,} frames: give at most {MAX_FRAMES} (e.g. --grid 3x3)")
    if grid is not None and args.frames is not None and grid[0] * grid[1] != args.frames:
        raise UserError(f"--grid {args.grid} holds {grid[0] * grid[1]} frames, not --frames {args.frames}: "
                        f"give one of them, or both in agreement")


def validate_out(out: Path) -> None:
    """--out is a folder, or can be made one, where this process may create folders (the bundle is staged beside
    its final place): checked by making and removing an empty folder, before any work, writing nothing."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: give a folder (the bundle goes to --out/<arch>-<target>/)")
    existing = nearest_existing(out)
    if not existing.is_dir():
        raise UserError(f"--out {out}: {existing} is a file, not a folder: give a folder (the bundle goes to "
                        f"--out/<arch>-<target>/)")
    err = cannot_create_in(existing)
    if err is not None:
        raise UserError(f"--out {out}: cannot create a folder in {existing} ({err.strerror or err}): give a folder "
                        f"this user can write")


def conflicts(args: argparse.Namespace, model: VidConv, source: str) -> None:
    """A model flag given together with a checkpoint whose own config says otherwise is an error naming both."""
    cfg = model.cfg
    given = {
        "--arch": (args.arch, cfg.arch, args.arch is not None and split_arch(args.arch)[0] == split_arch(cfg.arch)[0]),
        "--frames": (args.frames, cfg.frames, args.frames == cfg.frames),
        "--grid": (args.grid, "x".join(map(str, cfg.grid)), parse_grid(args.grid) == tuple(cfg.grid)),
        "--image-size": (args.image_size, cfg.image_size[0], tuple(cfg.image_size) == (args.image_size,) * 2),
        "--classes": (args.classes, cfg.num_classes, args.classes == cfg.num_classes),
        "--no-neck": (args.no_neck or None, not cfg.neck, cfg.neck is False),
    }
    for flag, (value, own, agrees) in given.items():
        if value is not None and not agrees:
            raise UserError(f"{flag} {value if flag != '--no-neck' else ''}".rstrip() +
                            f" conflicts with {source}, whose model has {flag.lstrip('-')} {own}: drop {flag}, or give "
                            f"--arch without --checkpoint for a randomly initialised model")


def choose_weights(args: argparse.Namespace, target: Target) -> Path | None:
    """The checkpoint to load: the one given, or with no --arch the target's shipped default (for finn-* the
    recipe's QAT-trained ``qat_model`` at --bits when it ships, else ``default_model``); None: random weights."""
    if args.checkpoint is not None:
        if args.checkpoint.is_dir():
            raise UserError(f"checkpoint {args.checkpoint} is a folder: give the path of a weights file")
        if not args.checkpoint.is_file():
            raise UserError(f"checkpoint {args.checkpoint} does not exist: give the path of a weights file")
        return args.checkpoint
    if args.arch is not None:
        return None
    qat_model = str(target.recipe.get("qat_model", "")) if target.family == "finn" else ""
    return (shipped_weights(qat_model.format(bits=args.bits.lower())) if qat_model else None) or \
        shipped_weights(target.default_model)


def load_weights(args: argparse.Namespace, target: Target) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model to export and a record of where its weights came from; every flag is honoured or refused."""
    arch = args.arch or target.default_model
    # A random FINN source gets layer scale 1: with ConvNeXt's 1e-6 every block is an identity and the
    # calibrated scales put values exactly on rounding ties, where FINN and Brevitas round differently.
    random_init = {"layer_scale_init": 1.0} if target.family == "finn" else {}

    grid = parse_grid(args.grid)
    # --grid alone decides the frames (a 2x2 grid holds 4), as --frames alone decides the grid.
    frames = args.frames or (grid[0] * grid[1] if grid else MODEL_DEFAULTS["frames"])

    def build(**init: float) -> VidConv:
        return build_model(arch, num_classes=args.classes or MODEL_DEFAULTS["classes"], frames=frames,
                           image_size=args.image_size, neck=not args.no_neck, grid=grid, **init)

    checkpoint = choose_weights(args, target)
    if checkpoint is not None and finn_metadata(checkpoint) is not None:
        if target.family != "finn":
            raise UserError(f"{checkpoint} is a FINN checkpoint (vidconv-finetune --qat): export it with --target finn-<board>")
        model, weights = load_finn_weights(checkpoint, shipped_name(checkpoint))
        conflicts(args, model, str(checkpoint))
        if getattr(args, "bits_given", None) is None:
            args.bits = str(model.bits)
        elif str(model.bits) != args.bits:
            raise UserError(f"--bits {args.bits_given} conflicts with {checkpoint}, a FINN model at {model.bits}: drop "
                            f"--bits, or give a float checkpoint to quantize at {args.bits}")
        return model, weights
    if checkpoint is not None:
        model, report = load_model(checkpoint, build)
        weights = {"source": str(checkpoint), "layout": report.layout, "report": report.summary()}
        if report.layout == "vidconv":  # the file carries its config: a flag can only agree with it
            conflicts(args, model, str(checkpoint))
        name = shipped_name(checkpoint)
        if name is not None:
            weights.update(source=f"shipped demo weights models/{name}.safetensors (model card models/{name}.yaml)",
                           shipped=name)
        elif checkpoint.with_suffix(".yaml").is_file():
            weights["card"] = str(checkpoint.with_suffix(".yaml"))
    else:
        torch.manual_seed(DEFAULT_SEED)
        model = build(**random_init)
        weights = {"source": f"random initialisation (seed {DEFAULT_SEED}{', layer scale 1' if random_init else ''}): "
                             f"no --checkpoint given"}
    if target.family == "dpu" and not split_arch(model.cfg.arch)[1]:
        model, note = to_dpu_variant(model)
        weights["conversion"] = note
    return model, weights


def load_finn_weights(checkpoint: Path, shipped: str | None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A QAT-trained FINN model (``shipped``: its shipped name, if it is one), used as is, and the record of its
    weights (with its float teacher if found)."""
    from vidconv_deploy.finn.checkpoint import load_finn_checkpoint

    model = load_finn_checkpoint(checkpoint)
    where = f"shipped demo weights models/{checkpoint.name}" if shipped else str(checkpoint)
    weights: dict[str, Any] = {"source": f"{where} (FINN variant {model.bits})"}
    if shipped:
        weights["shipped"] = shipped
    elif checkpoint.with_suffix(".yaml").is_file():
        weights["card"] = str(checkpoint.with_suffix(".yaml"))
    teacher = finn_teacher(checkpoint)
    if teacher is not None:
        weights["teacher"] = str(teacher)
    return model, weights


def finn_teacher(checkpoint: Path) -> Path | None:
    """The float model a FINN checkpoint was QAT-trained from, as its model card (``vidconv-finetune --qat``) names
    it: that file if it exists, else the shipped model of that file's name (the card's path is relative to where the
    training ran), else the shipped weights of the card's teacher arch; None if none is found."""
    card_path = checkpoint.with_suffix(".yaml")
    if not card_path.is_file():
        return None
    source = (yaml.safe_load(card_path.read_text(encoding="utf-8")) or {}).get("distilled_from", {})
    named = Path(source.get("teacher", ""))
    if named.is_file():
        return named
    return (shipped_weights(named.stem) if named.suffix == ".safetensors" else None) or shipped_weights(source.get("arch", ""))


def to_dpu_variant(model: VidConv) -> tuple[VidConv, str]:
    """A faithful model's DPU variant initialised from its weights (not distilled: say so)."""
    variant, initialised = init_variant(model, "dpu")
    note = (f"{model.cfg.arch} converted to {variant.cfg.arch} (LayerNorm -> BatchNorm with unit statistics, GELU -> ReLU) "
            f"without distillation: accuracy is NOT that of the faithful model; run vidconv-finetune --teacher CKPT "
            f"--student {variant.cfg.arch} first ({len(initialised)} BatchNorm statistics initialised)")
    Console(stderr=True).print(f"[yellow]warning:[/] {note}", soft_wrap=True)
    return variant.eval(), note


def model_data(weights: dict[str, Any]) -> dict[str, Any]:
    """What the model was trained on (classes, the data's generator), from the card of its weights: a shipped model's,
    else the card beside the checkpoint (vidconv-train and vidconv-finetune write one); empty when there is none."""
    if "shipped" in weights:
        return training_data(model_card(weights["shipped"]))
    try:
        card = yaml.safe_load(Path(weights["card"]).read_text(encoding="utf-8")) if "card" in weights else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):  # a file that is no card says nothing about the model
        card = None
    return training_data(card) if isinstance(card, dict) else {}


def class_names(args: argparse.Namespace, model: VidConv, weights: dict[str, Any]) -> list[str]:
    """Class names from the model's card, else the shipped card of its arch, else the calibration/eval dataset's
    classes.txt, else class_<i>."""
    n = model.cfg.num_classes
    names = model_data(weights).get("classes") or []
    names = names if len(names) == n else shipped_class_names(model.cfg.arch, n) or []
    for folder in (getattr(args, "eval", None), getattr(args, "calib", None)):
        if not names and folder is not None and (folder / "classes.txt").is_file():
            names = (folder / "classes.txt").read_text(encoding="utf-8", errors="replace").split()
    return list(names) if len(names) == n else [f"class_{i}" for i in range(n)]


def step_inputs(args: argparse.Namespace, target: Target, model: torch.nn.Module, weights: dict[str, Any]) -> dict[str, Any]:
    """What the steps read besides the model, decoded before any bundle exists (bad videos fail here)."""
    values: dict[str, Any] = {"class_names": class_names(args, model, weights)}
    if target.family in ("dpu", "finn", "vaiep"):
        from vidconv_deploy.data.calibration import calibration_clips

        cfg = model.cfg
        clips, source, skips = calibration_clips(args.calib, cfg.frames, cfg.image_size, args.calib_clips,
                                                 data=model_data(weights))
        values["calibration"] = {"clips": clips, "source": source, "skips": skips}
    if target.family == "finn":
        values["teacher"] = load_model(weights["teacher"])[0].eval() if "teacher" in weights else None
    return values


def print_targets(console: Console) -> None:
    table = Table(title="vidconv-export targets")
    for column in ("target", "family", "board", "runs here", "needs tools absent here"):
        table.add_column(column)
    for name in target_names():
        target = get_target(name)
        board = target.board.get("name", "") if target.board else ""
        absent = family(target.family).absent(target)
        steps = target.step_names
        table.add_row(name, target.family, str(board), f"{len(steps) - len(absent)} of {len(steps)} steps",
                      "; ".join(f"{step} ({', '.join(tools)})" for step, tools in absent.items()) or "-")
    console.print(table)


def artifacts_table(outcome: Outcome, title: str) -> Table:
    table = Table(title=title)
    for column in ("artifact", "file", "bytes"):
        table.add_column(column, justify="right" if column == "bytes" else "left")
    for role, art in outcome.context.bundle.artifacts.items():
        if "dir" in art:
            table.add_row(role, art["dir"] + "/", f"{sum(f['bytes'] for f in art['files'].values()):,} in {len(art['files'])} files")
        else:
            table.add_row(role, art["file"], f"{art['bytes']:,}")
    table.add_row("manifest", MANIFEST, "")
    return table


def summary_lines(outcome: Outcome) -> list[str]:
    """What a person reads after an export: the figures behind each verdict."""
    ctx = outcome.context
    lines = []
    verification = ctx.fields.get("verification", {})
    figures = ", ".join(f"{k} {v:.1e}" for k, v in verification.items() if k.endswith("_vs_torch") and v is not None)
    if figures:
        lines.append(f"relative error vs PyTorch: {figures} (tolerance {verification['tolerance']:.0e})")
    if ctx.target.family == "finn" and ctx.has("finn_report"):
        from vidconv_deploy.finn.report import print_report

        print_report(ctx.value("finn_report"), Console(stderr=True))
    if "compile" in ctx.fields:
        lines.append("xmodel: " + ("built" if ctx.fields["compile"]["ran"] else "not built here (see compile/docker_run.sh)"))
    if "finn" in ctx.fields:
        built = not str(ctx.fields["finn"]["bitfile"]).startswith("not built")
        lines.append("bitfile: " + ("built" if built else "not built here (see finn_build/docker_run.sh)"))
    if ctx.fields.get("accuracy"):
        lines.append("accuracy (test top-1): " + ", ".join(f"{row['model']} {row['top1']:.1f}%" for row in ctx.fields["accuracy"]))
    lines.append(f"verdict: {'holds' if outcome.verdict.holds else 'FAILED'}: {outcome.verdict.summary()}")
    return lines


def _main(argv: Sequence[str] | None) -> int:
    args = parse_args(argv)
    if args.list_targets:
        print_targets(Console())
        return 0
    # Every check that needs no model comes first: nothing is loaded, decoded or written before them.
    target = get_target(args.target)
    reject_foreign_flags(target, args)
    target = with_dpu(target, args)  # --dpu-arch / --fingerprint / --arch-json: the rule set of that DPU
    validate_model_flags(args)
    check_step_range(target.steps(), args.start_from, args.stop_after)  # before any model is loaded
    args.bits_given = getattr(args, "bits", None)
    family(target.family).validate(target, args)
    validate_out(args.out)
    console = Console(stderr=True, soft_wrap=True)
    model, weights = load_weights(args, target)
    final = bundle_dir(args.out, model.cfg.arch, target)
    remove_dead_leftovers(final)  # a killed run's staging folder; a bundle a killed swap had moved aside goes back
    if args.start_from:  # before the inputs are decoded: a --start-from without a finished bundle is bad input
        read_manifest(final, START_FROM_FIX)
    console.print(f"weights: {weights.get('report', weights['source'])}", highlight=False, markup=False)
    values = step_inputs(args, target, model, weights)
    outcome = export_bundle(target, model, weights, args, args.out, values, seed=DEFAULT_SEED)
    if args.json:
        manifest = json.loads((outcome.directory / MANIFEST).read_text(encoding="utf-8"))
        print(json.dumps({"bundle": str(outcome.directory), "verdict": manifest["verdict"],
                          "artifacts": manifest["artifacts"], "steps": manifest["steps"]}, indent=2))
    else:
        out = Console()
        out.print(artifacts_table(outcome, f"{model.cfg.arch} -> {target.name}: {outcome.directory}"))
        for line in summary_lines(outcome):  # one line each, however long: CI logs are read with grep
            out.print(line, highlight=False, markup=False, soft_wrap=True)
    return outcome.verdict.exit_code


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a CI job's timeout, ``kill``) interrupts the export as Ctrl-C does, so its staging folder is removed
    on the way out instead of waiting for the next run to clean it up (only SIGKILL leaves one behind)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    with terminate_as_interrupt():
        return run_main("vidconv-export", _main, argv)
