"""Bad input to the training and data commands: one line on stderr, exit 2, and nothing written or lost.

One case per kind of problem (issue 12): where training writes and what a resumed run must match;
flags that would train or score nothing; files that used to end in a traceback (a broken
checkpoint header, random bytes, non-UTF-8 lists, a read-only folder, an empty dataset); and
what --help says about exit codes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors.torch import save_file

from vidconv_deploy import build_model, save_checkpoint
from vidconv_deploy.cli import evaluate, finetune, info, make_data, train
from vidconv_deploy.data.loader import clip_batches

MODELS = Path(__file__).resolve().parents[1] / "models"
TINY_TEACHER = {"num_classes": 10, "image_size": 32, "dims": (8, 16, 24, 32), "depths": (1, 1, 1, 1), "neck_dim": 16}


def shipped() -> dict[str, str]:
    """Digest of every file in the shipped models/ folder: training must never touch it unasked."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(MODELS.iterdir()) if p.is_file()}


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The single stderr line a refused command printed (no traceback, no progress output)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def copy_dataset(src: Path, dst: Path, edit: Callable[[str, str], str] = lambda name, text: text) -> Path:
    """The dataset's lists (not its videos) in ``dst``, each passed through ``edit(name, text)``."""
    dst.mkdir()
    for name in ("classes.txt", "dataset.json", "train.txt", "val.txt", "test.txt"):
        (dst / name).write_text(edit(name, (src / name).read_text()))
    return dst


@pytest.fixture
def teacher(tmp_path: Path) -> Path:
    path = tmp_path / "teacher.safetensors"
    save_checkpoint(build_model("vic-nano", **TINY_TEACHER), path)
    return path


# --- 1. where training writes, and resuming only the same run ----------------------------------------------


def test_train_writes_under_runs_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    for arch in ("vic-nano", "vic-t"):
        assert train.parse_args(["--data", "d", "--arch", arch]).out == Path(f"runs/{arch}.safetensors")
    with pytest.raises(SystemExit) as exit_:
        train.main(["--help"])
    assert exit_.value.code == 0 and "(default runs/<arch>.safetensors)" in " ".join(capsys.readouterr().out.split())


def test_train_keeps_an_interrupted_run_and_resumes_only_the_same_run(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    before = shipped()
    monkeypatch.chdir(tmp_path)
    argv = ["--data", str(tiny_dataset), "--epochs", "2", "--batch", "20"]
    calls: list[str] = []

    def killed_in_epoch_2(model: object, videos: object, split: str, order: str = "normal") -> dict[str, float]:
        calls.append(split)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {"top1": 0.0, "top5": 0.0, "videos": 4}

    with monkeypatch.context() as patch:
        patch.setattr(train, "accuracy", killed_in_epoch_2)
        assert train.main(argv) == 130  # killed after epoch 1's state was saved, before epoch 2's
    state = Path("runs/vic-nano.state.pt")
    saved = state.read_bytes()
    assert one_error(capsys) == "vidconv-train: interrupted"
    assert sorted(p.name for p in Path("runs").iterdir()) == ["vic-nano.state.pt"]

    assert train.main(argv) == 2  # without --resume: never discard the unfinished run
    assert one_error(capsys) == ("vidconv-train: error: runs/vic-nano.state.pt holds an unfinished run (1 of 2 epochs "
                                 "done): pass --resume to continue it, or delete the file to start afresh")
    other = shutil.copytree(tiny_dataset, tmp_path / "other")
    assert train.main(["--data", str(other), "--epochs", "2", "--batch", "20", "--lr", "0.01", "--resume"]) == 2
    assert one_error(capsys) == (
        f"vidconv-train: error: cannot resume from runs/vic-nano.state.pt: it is a run with other settings "
        f"(--data {tiny_dataset.resolve()} in the state, {other.resolve()} given; --lr 0.002 in the state, 0.01 given): "
        f"repeat the flags of that run, or delete the file to start afresh")
    assert state.read_bytes() == saved and sorted(p.name for p in Path("runs").iterdir()) == ["vic-nano.state.pt"]

    assert train.main([*argv, "--resume"]) == 0  # the same flags continue it: one more epoch, then the card
    card = yaml.safe_load(Path("runs/vic-nano.yaml").read_text())
    assert [h["epoch"] for h in card["training"]["history"]] == [1, 2] and card["weights"] == "vic-nano.safetensors"
    assert shipped() == before


def test_finetune_resume_must_match_the_saved_run(
        tiny_dataset: Path, teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "student.safetensors"
    argv = ["--teacher", str(teacher), "--student", "vic-nano-dpu", "--clips", str(tiny_dataset), "--epochs", "2",
            "--batch", "20", "--out", str(out)]

    def killed_in_epoch_2(*args: Any, **kwargs: Any) -> Callable[[int], Iterable[object]]:
        batches = clip_batches(*args, **kwargs)

        def epoch_batches(epoch: int) -> Iterable[object]:
            if epoch == 1:
                raise KeyboardInterrupt
            return batches(epoch)

        return epoch_batches

    with monkeypatch.context() as patch:
        patch.setattr(finetune, "clip_batches", killed_in_epoch_2)
        assert finetune.main(argv) == 130
    capsys.readouterr()
    state = out.with_suffix(".state.pt")
    saved = state.read_bytes()
    assert finetune.main(argv) == 2
    assert one_error(capsys) == (f"vidconv-finetune: error: {state} holds an unfinished run (1 of 2 epochs done): "
                                 f"pass --resume to continue it, or delete the file to start afresh")
    assert finetune.main([*argv, "--lr", "0.01", "--seed", "3", "--resume"]) == 2
    assert one_error(capsys) == (
        f"vidconv-finetune: error: cannot resume from {state}: it is a run with other settings (--lr 0.0005 in the "
        f"state, 0.01 given; --seed 0 in the state, 3 given): repeat the flags of that run, or delete the file to "
        f"start afresh")
    assert state.read_bytes() == saved and not out.exists() and not out.with_suffix(".yaml").exists()


# --- 2. flags that would train or score nothing -------------------------------------------------------------


@pytest.mark.parametrize("command,argv,message", [
    (train, ["--epochs", "0"], "vidconv-train: error: --epochs 0 would write an untrained model: give --epochs 1 or more"),
    (train, ["--batch", "0"], "vidconv-train: error: --batch 0 holds no clips: give --batch 1 or more, e.g. --batch 16"),
    (train, ["--lr", "-0.1"],
     "vidconv-train: error: --lr -0.1 is not a learning rate: give a positive number, e.g. --lr 0.002"),
    (finetune, ["--epochs", "0"],
     "vidconv-finetune: error: --epochs 0 would write an untrained model: give --epochs 1 or more"),
    (evaluate, ["--limit", "0"], "vidconv-eval: error: --limit 0 scores no video: give --limit 1 or more, "
                                 "or leave it out to score the whole split"),
    (evaluate, ["--limit", "-3"], "vidconv-eval: error: --limit -3 scores no video: give --limit 1 or more, "
                                  "or leave it out to score the whole split"),
    (info, ["--frames", "-4"],
     "vidconv-info: error: --frames -4 is not a frame count: give --frames 1 or more, e.g. --frames 9"),
])
def test_flags_that_do_nothing_are_refused_before_any_work(
        command: object, argv: list[str], message: str, tiny_dataset: Path, teacher: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    before = shipped()
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.safetensors"
    base = {train: ["--data", str(tiny_dataset), "--out", str(out)],
            finetune: ["--teacher", str(teacher), "--student", "vic-nano-dpu", "--clips", str(tiny_dataset),
                       "--out", str(out)],
            evaluate: ["--bundle", str(tmp_path), "--data", str(tiny_dataset)],
            info: ["vic-t"]}[command]
    assert command.main([*base, *argv]) == 2  # type: ignore[attr-defined]
    assert one_error(capsys) == message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.safetensors"]  # no output, no eval.json, no runs/
    assert shipped() == before


# --- 3. files that used to end in a traceback ------------------------------------------------------------------


@pytest.mark.parametrize("header,problem", [
    ("{not json", "is not JSON (Expecting property name enclosed in double quotes)"),
    ('{"arch": "vic-nano", "dims": "wide", "depths": [1, 1, 2, 1], "neck_dim": 0}',
     "has values of the wrong type or sign (dims=wide, neck_dim=0)"),
])
def test_a_checkpoint_with_a_broken_config_header(
        header: str, problem: str, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "teacher.safetensors"
    tensors = {k: v.contiguous() for k, v in build_model("vic-nano", **TINY_TEACHER).state_dict().items()}
    save_file(tensors, str(bad), metadata={"vidconv_config": header})
    out = tmp_path / "student.safetensors"
    assert finetune.main(["--teacher", str(bad), "--student", "vic-nano-dpu", "--clips", str(tiny_dataset),
                          "--out", str(out)]) == 2
    assert one_error(capsys) == (f"vidconv-finetune: error: {bad}: the model config in its header {problem}: use the "
                                 f"file that vidconv-train or vidconv-finetune wrote, or re-export the model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.safetensors"]


def test_random_bytes_are_not_a_checkpoint(tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "teacher.pth"
    junk.write_bytes(bytes(range(7, 256)) * 4)
    assert finetune.main(["--teacher", str(junk), "--qat", "--clips", str(tiny_dataset),
                          "--out", str(tmp_path / "q.safetensors")]) == 2
    assert one_error(capsys) == (f"vidconv-finetune: error: {junk} is not a checkpoint: it is not a zip, pickle or "
                                 f"safetensors file; expected a PyTorch state dict (.pth) or a vidconv .safetensors file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.pth"]


@pytest.mark.parametrize("name", ["classes.txt", "train.txt"])
def test_non_utf8_lists(name: str, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = copy_dataset(tiny_dataset, tmp_path / "data")
    (data / name).write_bytes(b"caf\xe9 0\n")
    assert train.main(["--data", str(data), "--out", str(tmp_path / "m.safetensors")]) == 2
    what = "class list" if name == "classes.txt" else "annotation list"
    assert one_error(capsys) == (f"vidconv-train: error: {what} {data / name} is not UTF-8 text (byte 0xe9 at offset 3): "
                                 f"save it as UTF-8")
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "m.state.pt").exists()


def test_make_data_into_a_read_only_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes through permission bits: answer as a read-only mount does
        real = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == folder else real(path, mode, **kw))
    try:
        assert make_data.main(["--out", str(folder / "data"), "--train", "1", "--val", "0", "--test", "0"]) == 2
        assert one_error(capsys) == (f"vidconv-make-data: error: cannot write into {folder} (read-only): "
                                     f"choose a writable --out folder")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_an_empty_dataset_is_neither_written_nor_trained_on(
        tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert make_data.main(["--out", str(tmp_path / "empty"), "--train", "0", "--val", "0", "--test", "0"]) == 2
    assert one_error(capsys) == ("vidconv-make-data: error: --train 0 --val 0 --test 0 would write an empty dataset: "
                                 "give at least one of them 1 or more")
    assert not (tmp_path / "empty").exists()
    # Lists whose videos are all gone: the split is empty once the missing files are skipped.
    data = copy_dataset(tiny_dataset, tmp_path / "gone",
                        lambda name, text: "".join(f"gone/{line}\n" for line in text.splitlines())
                        if name.endswith(".txt") and name != "classes.txt" else text)
    assert train.main(["--data", str(data), "--out", str(tmp_path / "m.safetensors")]) == 2
    assert one_error(capsys) == (f"vidconv-train: error: no usable videos in the train split of {data} ({{'missing': 20}}): "
                                 f"give --data a dataset folder whose train videos are readable (vidconv-make-data writes one)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gone"]


# --- 4. --help: exit codes, no reST markup ------------------------------------------------------------------------


@pytest.mark.parametrize("command", [train, finetune, make_data, evaluate, info])
def test_help_states_exit_codes_without_rest_markup(command: object, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        command.main(["--help"])  # type: ignore[attr-defined]
    text = capsys.readouterr().out
    assert exit_.value.code == 0 and "``" not in text
    assert "exit codes:\n  0 " in text and "\n  2    bad input" in text
