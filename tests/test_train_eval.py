"""Training, distillation and evaluation: a short run lowers the loss and resumes; one process and
Ray give identical scores; the CLI's output and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vidconv_deploy import build_model
from vidconv_deploy.cli.evaluate import main as eval_main
from vidconv_deploy.cli.export import main as export_main
from vidconv_deploy.data.loader import clip_batches
from vidconv_deploy.data.dataset import protocol_for, train_clips
from vidconv_deploy.data.sources import open_split
from vidconv_deploy.evaluate.classifiers import bundle_classifiers
from vidconv_deploy.evaluate.metrics import Scores
from vidconv_deploy.evaluate.run import reorder
from vidconv_deploy.evaluate.sharded import score_split, score_split_ray
from vidconv_deploy.train.loop import TrainConfig, fit
from vidconv_deploy.train.losses import DistillLoss

TINY = {"dims": (8, 16, 24, 32), "depths": (1, 1, 1, 1), "neck_dim": 16, "image_size": 32, "num_classes": 10}


class Killed(Exception):
    pass


def tiny_training(dataset_dir, epochs, state_path=None, kill_at_epoch=None):
    torch.manual_seed(0)
    model = build_model("vic-nano", **TINY)
    loader = clip_batches(train_clips(dataset_dir, 9, 32, seed=0, progress=False), 4)

    def epoch_batches(epoch):
        if epoch == kill_at_epoch:
            raise Killed
        return loader(epoch)

    state = fit(model, TrainConfig(epochs=epochs, steps_per_epoch=5, lr=3e-3, warmup_epochs=0.2), epoch_batches,
                lambda m, x, y: F.cross_entropy(m(x), y), state_path=state_path)
    return model, state


def test_a_short_training_run_lowers_the_loss_and_resumes(tiny_dataset, tmp_path):
    _, full = tiny_training(tiny_dataset, 4)
    assert [h["epoch"] for h in full.history] == [1, 2, 3, 4]
    assert full.history[-1]["loss"] < full.history[0]["loss"]
    # Killed in epoch 3, resumed: the same history as the run that never stopped.
    state_file = tmp_path / "run.state.pt"
    with pytest.raises(Killed):
        tiny_training(tiny_dataset, 4, state_file, kill_at_epoch=2)
    _, resumed = tiny_training(tiny_dataset, 4, state_file)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history], rel=1e-4)


def test_a_foreign_state_file_is_a_one_line_error(tiny_dataset, tmp_path):
    bad = tmp_path / "bad.state.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(Exception, match=r"cannot resume from .*bad.state.pt: .*delete it to start afresh"):
        tiny_training(tiny_dataset, 1, bad)


def test_distill_loss_terms():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    feats = torch.ones(1, 4)
    loss = DistillLoss(temperature=2.0, feature_weight=1.0, label_weight=0.0)
    assert loss(logits, logits, feats, feats).item() == pytest.approx(0.0, abs=1e-7)
    assert loss(logits, logits, feats, feats + 1).item() == pytest.approx(1.0)
    with_labels = DistillLoss(label_weight=0.5)(logits, logits, labels=torch.tensor([0]))
    assert with_labels.item() == pytest.approx(0.5 * F.cross_entropy(logits, torch.tensor([0])).item())


def test_frame_order_transforms():
    clips = np.arange(2 * 9, dtype=np.float32).reshape(2, 9, 1, 1, 1)
    assert reorder(clips, "reverse", np.random.default_rng(0))[0, :, 0, 0, 0].tolist() == list(range(8, -1, -1))
    shuffled = reorder(clips, "shuffle", np.random.default_rng(0))
    assert sorted(shuffled[1, :, 0, 0, 0].tolist()) == list(range(9, 18))
    assert shuffled[1, :, 0, 0, 0].tolist() != list(range(9, 18))


def test_topk_and_agreement():
    s = Scores(np.array([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0]]), np.array([1, 2]))
    assert (s.topk(1), s.topk(2)) == (50.0, 100.0)
    assert s.agreement(Scores(np.array([[1.0, 0, 0], [1.0, 0, 0]]), s.labels)) == 50.0


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle")
    argv = ["--arch", "vic-nano", "--classes", "10", "--image-size", "32", "--out", str(out)]
    assert export_main(argv) == 0
    return out / "vic-nano-onnx"


def test_ray_gives_the_same_scores_as_one_process(onnx_bundle, tiny_dataset):
    source = open_split(tiny_dataset, "test")
    protocol = protocol_for(source, 9, None)
    factory = lambda: bundle_classifiers(onnx_bundle)  # noqa: E731
    single, _ = score_split(source.items, factory, protocol, (32, 32), order="shuffle")
    on_ray, _ = score_split_ray("local", source.items, factory, protocol, (32, 32), order="shuffle", workers=2)
    assert set(single) == set(on_ray) == {"float", "deploy"}
    for name in single:
        np.testing.assert_array_equal(single[name].labels, on_ray[name].labels)
        np.testing.assert_array_equal(single[name].logits, on_ray[name].logits)
    assert len(single["float"].labels) == 6


def test_eval_cli_writes_figures_and_rejects_the_wrong_target(onnx_bundle, tiny_dataset, capsys):
    assert eval_main(["--bundle", str(onnx_bundle), "--data", str(tiny_dataset), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["model"]: r for r in result["orders"]["normal"]}
    assert rows["float"]["videos"] == 6 and rows["deploy"]["agreement_with_float"] == 100.0
    assert json.loads((onnx_bundle / "eval.json").read_text())["orders"] == result["orders"]
    assert eval_main(["--bundle", str(onnx_bundle), "--data", str(tiny_dataset), "--target", "dpu-kv260"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was exported for 'onnx', not 'dpu-kv260'" in err[0]
    assert eval_main(["--bundle", str(tiny_dataset), "--data", str(tiny_dataset)]) == 2
    assert "holds no readable manifest.json" in capsys.readouterr().err
