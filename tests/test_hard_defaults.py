"""The hard-set models are the defaults (issue 17): each target's shipped model, its class names from its own
card (not its arch's), and default calibration videos made like its training data (the hard generator at 64x64
for the hard models, the easy one at the default size for the easy models)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from vidconv_deploy.cli.export import finn_teacher, main as export_main
from vidconv_deploy.cli.stream import class_names as stream_class_names
from vidconv_deploy.data.calibration import CALIBRATION_SEED, synthetic_calibration_spec
from vidconv_deploy.data.synthetic_hard import CLASSES as HARD_CLASSES
from vidconv_deploy.errors import UserError
from vidconv_deploy.models.zoo import (model_card, shipped_class_names, shipped_name, shipped_weights, teacher_card,
                                       training_data)
from vidconv_deploy.targets.registry import get_target

REPO = Path(__file__).resolve().parents[1]
EASY = ["move_right", "move_left", "move_down", "move_up", "rotate_clockwise", "rotate_counterclockwise", "grow",
        "shrink", "appear", "disappear"]


def test_every_target_defaults_to_a_shipped_hard_model():
    defaults = {name: get_target(name).default_model for name in ("onnx", "dpu-kv260", "dpu-vek280", "finn-kv260",
                                                                  "vaiep-ve2-npu", "vaiep-vek280")}
    assert defaults == {"onnx": "vic-nano-hard", "dpu-kv260": "vic-nano-dpu-hard", "dpu-vek280": "vic-nano-dpu-hard",
                        "finn-kv260": "vic-nano-dpu-hard", "vaiep-ve2-npu": "vic-nano-hard",
                        "vaiep-vek280": "vic-nano-dpu-hard"}
    assert get_target("finn-kv260").recipe["qat_model"] == "vic-nano-hard-finn-{bits}"
    for name in {*defaults.values(), "vic-nano-hard-finn-w4a4", "vic-nano-hard-finn-w8a8"}:
        assert shipped_weights(name) is not None and model_card(name)["config"]["num_classes"] == 16, name
    for easy in ("vic-nano", "vic-nano-dpu", "vic-nano-finn-w4a4"):  # still shipped, for tests and quick demos
        assert model_card(easy)["config"]["num_classes"] == 10


def test_a_shipped_model_is_known_by_its_name_not_its_arch(tmp_path):
    assert model_card("vic-nano-hard")["config"]["arch"] == model_card("vic-nano")["config"]["arch"] == "vic-nano"
    assert shipped_name(REPO / "models/vic-nano-hard.safetensors") == "vic-nano-hard"
    copy = tmp_path / "vic-nano-hard.safetensors"
    shutil.copy(REPO / "models/vic-nano-hard.safetensors", copy)
    assert shipped_name(copy) is None  # the same bytes elsewhere are the user's file
    assert shipped_weights("") is None and model_card("") == {} and shipped_weights("vic-nano-none") is None


def test_variants_take_classes_and_data_from_their_teacher():
    assert shipped_class_names("vic-nano-hard", 16) == list(HARD_CLASSES)
    assert shipped_class_names("vic-nano-dpu-hard", 16) == list(HARD_CLASSES)  # its card lists none: the teacher's
    assert shipped_class_names("vic-nano-hard-finn-w4a4", 16) == list(HARD_CLASSES)
    assert shipped_class_names("vic-nano-dpu", 10) == EASY and shipped_class_names("vic-nano", 10) == EASY
    assert shipped_class_names("vic-nano-dpu-hard", 10) is None  # a count that differs is no answer
    assert teacher_card(model_card("vic-nano-dpu-hard"))["weights"] == "vic-nano-hard.safetensors"
    data = training_data(model_card("vic-nano-hard-finn-w8a8"))
    assert data["generator_version"] == 3 and "--difficulty hard --size 64" in data["made_with"]
    assert "generator_version" not in training_data(model_card("vic-nano-dpu"))
    assert finn_teacher(shipped_weights("vic-nano-hard-finn-w4a4")).name == "vic-nano-hard.safetensors"


def test_calibration_videos_are_made_like_the_training_data():
    hard = synthetic_calibration_spec(training_data(model_card("vic-nano-dpu-hard")), 16)
    assert (hard.difficulty, hard.size, hard.seed, hard.val, hard.train, hard.test) == ("hard", 64, CALIBRATION_SEED, 16, 0, 0)
    easy = synthetic_calibration_spec(training_data(model_card("vic-nano-dpu")), 4)
    assert (easy.difficulty, easy.size, easy.val) == ("easy", 96, 4)  # as before the hard set: the defaults
    assert synthetic_calibration_spec({}, 2) == easy.__class__(seed=CALIBRATION_SEED, train=0, val=2, test=0)
    made = synthetic_calibration_spec({"made_with": "vidconv-make-data --out d --difficulty hard --size 48"}, 1)
    assert (made.difficulty, made.size) == ("hard", 48)
    with pytest.raises(UserError, match=r"generator version 1 \(no command given\), which this vidconv-make-data no "
                                        r"longer makes \(it makes easy: version 2, hard: version 3\): give --calib"):
        synthetic_calibration_spec({"generator_version": 1}, 2)


def manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def test_default_dpu_export_is_the_hard_variant_calibrated_on_hard_videos(tmp_path, capsys):
    assert export_main(["--target", "dpu-kv260", "--calib-clips", "1", "--stop-after", "export_float",
                        "--out", str(tmp_path)]) == 0
    data = manifest(tmp_path / "vic-nano-dpu-dpu-kv260")
    assert data["model"]["weights"]["source"] == ("shipped demo weights models/vic-nano-dpu-hard.safetensors "
                                                  "(model card models/vic-nano-dpu-hard.yaml)")
    assert data["model"]["weights"]["shipped"] == "vic-nano-dpu-hard" and data["model"]["config"]["num_classes"] == 16
    assert data["calibration"]["source"] == ("1 synthetic-motion videos (vidconv-make-data --difficulty hard --size 64 "
                                             "--seed 1000, generator version 3)")
    assert stream_class_names(data) == list(HARD_CLASSES)  # vidconv-stream labels the bundle's predictions


def test_named_easy_model_keeps_easy_calibration(tmp_path):
    assert export_main(["--target", "dpu-kv260", "--checkpoint", str(REPO / "models/vic-nano-dpu.safetensors"),
                        "--calib-clips", "1", "--stop-after", "export_float", "--out", str(tmp_path)]) == 0
    data = manifest(tmp_path / "vic-nano-dpu-dpu-kv260")
    assert data["model"]["weights"]["shipped"] == "vic-nano-dpu" and data["model"]["config"]["num_classes"] == 10
    assert data["calibration"]["source"] == ("1 synthetic-motion videos (vidconv-make-data --difficulty easy --size 96 "
                                             "--seed 1000, generator version 2)")
    assert stream_class_names(data) == EASY


def test_a_card_beside_a_user_checkpoint_decides_its_calibration(tmp_path):
    """A model trained elsewhere from the hard teacher (its card names it) calibrates on hard videos too."""
    ckpt = tmp_path / "mine.safetensors"
    shutil.copy(REPO / "models/vic-nano-dpu-hard.safetensors", ckpt)
    card = yaml.safe_load((REPO / "models/vic-nano-dpu-hard.yaml").read_text())
    del card["data"]["generator_version"], card["data"]["made_with"]  # only the teacher says
    ckpt.with_suffix(".yaml").write_text(yaml.safe_dump(card))
    assert export_main(["--target", "dpu-kv260", "--checkpoint", str(ckpt), "--calib-clips", "1",
                        "--stop-after", "export_float", "--out", str(tmp_path / "out")]) == 0
    data = manifest(tmp_path / "out" / "vic-nano-dpu-dpu-kv260")
    assert data["model"]["weights"]["card"] == str(ckpt.with_suffix(".yaml")) and "shipped" not in data["model"]["weights"]
    assert "--difficulty hard --size 64" in data["calibration"]["source"]
