"""Training at scale (issue 17): torchrun's processes, the device and AMP choices, and the data shards.

The two torchrun tests start real processes (gloo on the CPU): a 2-process run of a tiny model must
end with the weights of a 1-process run with the same global batch, and a 2-process vidconv-finetune
must exit 0 with rank 0 alone writing. The CUDA branches are tested by their selection logic only:
this machine has no GPU.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from vidconv_deploy import build_model, save_checkpoint
from vidconv_deploy.cli import finetune, train
from vidconv_deploy.data.dataset import train_clips
from vidconv_deploy.data.loader import EpochOrder, clip_batches
from vidconv_deploy.data.video import BadVideo
from vidconv_deploy.errors import UserError
from vidconv_deploy.train.loop import TrainConfig, fit
from vidconv_deploy.train.runtime import Runtime, World, amp_dtype, backend_for, pick_device, start_runtime, world_from_env

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = {"dims": (8, 16, 24, 32), "depths": (1, 1, 1, 1), "neck_dim": 16, "image_size": 32, "num_classes": 10}
#: Weights of the 2-process run vs the 1-process run after 6 AdamW steps at lr 3e-3 (measured: 2e-7). Each
#: process sums 4 clips' gradients and the two sums are averaged, where one process sums 8: float32
#: rounding in another order, ~1e-7 relative per step, which AdamW turns into updates of that size.
WEIGHTS_ATOL = 1e-5


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run`` (torchrun) with 2 CPU processes on this machine."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


# --- the world torchrun describes, the device, AMP -----------------------------------------------------------


def test_the_world_comes_from_torchruns_environment() -> None:
    assert world_from_env({}) == World(0, 1, 0) and World().main
    world = world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert world == World(3, 4, 1) and not world.main
    assert world.share(list(range(10))) == [3, 7]
    with pytest.raises(UserError, match=r"^LOCAL_RANK not set while RANK and WORLD_SIZE are: start several processes "
                                        r"with torchrun, which sets all three, or unset them to train in one process$"):
        world_from_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(UserError, match=r"^RANK=2 WORLD_SIZE=2 LOCAL_RANK=0 is no process of a run"):
        world_from_env({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(UserError, match=r"^RANK=a WORLD_SIZE=2 LOCAL_RANK=0 are not all whole numbers"):
        world_from_env({"RANK": "a", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_device_choice_and_its_cuda_branch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not torch.cuda.is_available()  # this machine: auto means the CPU, cuda is refused
    assert pick_device("auto", World()) == pick_device("cpu", World()) == torch.device("cpu")
    with pytest.raises(UserError, match=r"^--device cuda, but PyTorch sees no CUDA GPU"):
        pick_device("cuda", World())
    with pytest.raises(UserError, match=r"^--device tpu is not a device: give auto, cpu or cuda$"):
        pick_device("tpu", World())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("auto", World(3, 4, 1)) == torch.device("cuda", 1)  # each process of a node: its own GPU
    assert pick_device("cpu", World(3, 4, 1)) == torch.device("cpu")
    with pytest.raises(UserError, match=r"LOCAL_RANK 2 has no GPU of its own on this node \(2 GPUs\): start at most 2 "
                                        r"processes per node \(torchrun --nproc-per-node 2\)$"):
        pick_device("cuda", World(2, 3, 2))
    assert (backend_for(torch.device("cuda", 1)), backend_for(torch.device("cpu"))) == ("nccl", "gloo")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # a GPU older than Ampere
    assert amp_dtype(torch.device("cuda", 0)) == torch.float16 and amp_dtype(torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert amp_dtype(torch.device("cuda", 0)) == torch.bfloat16


def test_loss_scaling_only_for_float16_and_the_batch_splits_evenly() -> None:
    assert Runtime(amp=torch.float16).grad_scaler().is_enabled()
    assert not Runtime(amp=torch.bfloat16).grad_scaler().is_enabled() and not Runtime().grad_scaler().is_enabled()
    assert Runtime(world=World(1, 4, 1)).batch_per_process(64) == 16
    with pytest.raises(UserError, match=r"^--batch 10 does not split over 4 processes: give a multiple of 4, "
                                        r"e.g. --batch 8 or 12$"):
        Runtime(world=World(1, 4, 1)).batch_per_process(10)
    with pytest.raises(UserError, match=r"^--sync-bn needs CUDA GPUs"):
        start_runtime("cpu", sync_bn=True)


def test_amp_on_the_cpu_runs_the_forward_in_bfloat16_and_keeps_float32_weights() -> None:
    torch.manual_seed(0)
    model = build_model("vic-nano", **TINY)
    clips, labels = torch.randn(2, 9, 3, 32, 32), torch.arange(2)
    seen: list[torch.dtype] = []

    def loss(forward, x, y):  # type: ignore[no-untyped-def]
        logits = forward(x)
        seen.append(logits.dtype)
        return F.cross_entropy(logits, y)

    state = fit(model, TrainConfig(epochs=1, steps_per_epoch=1), lambda epoch: [(clips, labels)], loss,
                runtime=Runtime(amp=amp_dtype(torch.device("cpu"))))
    assert seen == [torch.bfloat16]
    assert {p.dtype for p in model.parameters()} == {torch.float32} and math.isfinite(state.history[0]["loss"])


# --- the data: DistributedSampler shards, bad videos -----------------------------------------------------------


def test_two_shards_cover_the_one_process_batches_and_epochs_reshuffle(tiny_dataset: Path) -> None:
    data = train_clips(tiny_dataset, 9, 32, seed=0, progress=False)
    one, halves = EpochOrder(data, 0, 1), [EpochOrder(data, rank, 2) for rank in (0, 1)]
    orders = []
    for epoch in (0, 1):
        for order in (one, *halves):
            order.set_epoch(epoch)
        whole = [index for _, index in one]
        shares = [[index for e, index in half if e == epoch] for half in halves]
        assert sorted(whole) == list(range(20)) and [len(s) for s in shares] == [10, 10]
        for step in range(3):  # --batch 8: one process takes 8 clips a step, each of two takes 4
            both = shares[0][4 * step:4 * step + 4] + shares[1][4 * step:4 * step + 4]
            assert sorted(both) == sorted(whole[8 * step:8 * step + 8])
        orders.append(whole)
    assert orders[0] != orders[1]


def test_a_video_found_bad_in_a_batch_is_reported_and_not_asked_for_again(
        tiny_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = train_clips(tiny_dataset, 9, 32, seed=0, progress=False)
    bad = data.videos[5][0].path
    load = data.clip

    def truncated(epoch: int, index: int):  # type: ignore[no-untyped-def]
        if index == 5:
            raise BadVideo("truncated", "ends after 3 frames")
        return load(epoch, index)

    monkeypatch.setattr(data, "clip", truncated)
    epochs = clip_batches(data, 8, workers=1)  # found in a loader worker, reported in this process
    assert sum(len(labels) for _, labels in epochs(0)) == 19
    assert data.skips.to_dict()["files"] == {"truncated": [str(bad)]}
    order = EpochOrder(data, 0, 1)
    order.set_epoch(1)
    assert len(list(order)) == 19 and 5 not in {index for _, index in order}


# --- flags, refused before any work --------------------------------------------------------------------------


@pytest.mark.parametrize(("flags", "env", "message"), [
    (["--workers", "-1"], {}, "--workers -1 is negative: give 0 (decode in the training process) or more"),
    (["--device", "cuda"], {}, "--device cuda, but PyTorch sees no CUDA GPU (a CPU-only build of torch, or no driver): "
                               "give --device cpu, or install a CUDA build of torch"),
    (["--sync-bn"], {}, "--sync-bn needs CUDA GPUs (PyTorch's SyncBatchNorm does not run on the CPU): drop --sync-bn, "
                        "or train with --device cuda"),
    (["--batch", "3"], {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"},
     "--batch 3 does not split over 2 processes: give a multiple of 2, e.g. --batch 2 or 4"),
])
def test_runtime_flags_are_refused_in_one_line(flags: list[str], env: dict[str, str], message: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "m.safetensors"
    assert train.main(["--data", str(tmp_path), "--out", str(out), *flags]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"vidconv-train: error: {message}"]
    assert finetune.main(["--teacher", "t.safetensors", "--student", "vic-nano-dpu", "--clips", str(tmp_path),
                          "--out", str(out), *flags]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"vidconv-finetune: error: {message}"]
    assert list(tmp_path.iterdir()) == []


# --- torchrun: 2 gloo processes ------------------------------------------------------------------------------


def test_two_processes_give_the_weights_of_one(tiny_dataset: Path, tmp_path: Path) -> None:
    """2 processes x batch 4 = 1 process x batch 8 on the same clips in the same order, to float rounding."""
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    single = subprocess.run([sys.executable, "tests/ddp_fit.py", str(tiny_dataset), str(one), "8"], capture_output=True,
                            text=True, timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert single.returncode == 0, single.stderr
    pair = torchrun("tests/ddp_fit.py", str(tiny_dataset), str(two), "8")
    assert pair.returncode == 0, pair.stderr
    a, b = (torch.load(path, weights_only=True) for path in (one, two))
    assert a["clips"] == [[8, 8, 4, 8, 8, 4]] and b["clips"] == [[4, 4, 2, 4, 4, 2]] * 2  # 20 videos, 3 steps an epoch
    assert [h["loss"] for h in b["history"]] == pytest.approx([h["loss"] for h in a["history"]], rel=1e-6)
    assert a["weights"].keys() == b["weights"].keys()
    for name, weight in a["weights"].items():
        torch.testing.assert_close(b["weights"][name], weight, rtol=0, atol=WEIGHTS_ATOL, msg=name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.pt", "one.state.pt", "two.pt", "two.state.pt"]


def test_finetune_under_torchrun_exits_0_and_only_rank_0_writes(tiny_dataset: Path, tmp_path: Path) -> None:
    teacher, out = tmp_path / "teacher.safetensors", tmp_path / "run" / "student.safetensors"
    save_checkpoint(build_model("vic-nano", **TINY), teacher)
    run = torchrun("--no-python", str(BIN / "vidconv-finetune"), "--teacher", str(teacher), "--student", "vic-nano-dpu",
                   "--clips", str(tiny_dataset), "--epochs", "1", "--batch", "10", "--out", str(out))
    assert run.returncode == 0, run.stderr
    # One summary line: rank 1 returned before writing anything, rank 0 wrote the student, its card and the state.
    assert " ".join(run.stdout.split()).count("vic-nano-dpu distilled from vic-nano in") == 1
    assert sorted(p.name for p in out.parent.iterdir()) == ["student.safetensors", "student.state.pt", "student.yaml"]
    card = yaml.safe_load(out.with_suffix(".yaml").read_text())
    assert card["training"]["machine"] == "2 processes x 1 CPU thread" and card["training"]["amp"] is False
    assert [h["epoch"] for h in card["training"]["history"]] == [1]
    assert card["accuracy"]["test"]["student"]["videos"] == 6  # rank 0 scored the whole test split
