"""``export_finn_bundle`` end to end on vic-nano: artifacts, manifest, report, build configs, the bit-exact chain."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("finn", reason="finn-plus not installed (scripts/finn-install.sh)")

from finn.builder.build_dataflow_config import DataflowBuildConfig, default_build_dataflow_steps  # noqa: E402

from vidconv_deploy.errors import UserError  # noqa: E402
from vidconv_deploy.export.bundle import Bundle  # noqa: E402
from vidconv_deploy.finn.boards import RESOURCES  # noqa: E402
from vidconv_deploy.finn.pipeline import export_finn_bundle  # noqa: E402

ROLES = {f"{kind}_{graph}" for kind in ("qonnx", "finn_streamlined", "finn_dataflow", "folding_config")
         for graph in ("early", "later")} | {"finn_report", "finn_log", "finn_build"}


@pytest.fixture(scope="module")
def nano(tmp_path_factory, monkeypatch_module):
    """vic-nano (random init) exported for finn-kv260 at w4a4, no --fps, on a machine without Vivado."""
    monkeypatch_module.delenv("XILINX_VIVADO", raising=False)
    out = tmp_path_factory.mktemp("bundle") / "vic-nano-finn-kv260"
    bundle = Bundle(out, "finn-kv260")
    result = export_finn_bundle(bundle, None, "kv260", "w4a4", fps=None, seed=0)
    bundle.finish(**result["manifest"])
    return out, result


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_bundle_artifacts_and_manifest(nano):
    out, _ = nano
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["artifacts"]) == ROLES
    for role, art in manifest["artifacts"].items():
        assert (out / art.get("file", art.get("dir", ""))).exists(), role
    steps = {s["name"]: s for s in manifest["steps"]}
    assert steps["finn build"]["status"] == "not run" and "no Vivado" in steps["finn build"]["reason"]
    assert manifest["finn"]["bitfile"].startswith("not built")
    assert all(steps[f"{s} {g}"]["status"] == "ran" for s in ("streamline", "dataflow", "estimate") for g in ("early", "later"))
    assert manifest["io"]["finn_dataflow_later"]["output"]["datatype"] == "INT8"


def test_report_has_the_issue_fields(nano):
    out, result = nano
    report = json.loads((out / "finn_report.json").read_text())
    assert {"unmapped_nodes", "fps", "latency_ms", "resources", "board", "utilization", "fits"} <= set(report)
    assert report["unmapped_nodes"] == [] and result["mapped"]
    assert set(report["resources"]) == set(RESOURCES) == set(report["utilization"])
    assert report["board"]["part"] == "xck26-sfvc784-2LV-c" and report["board"]["budget"]["DSP"] == 1248
    budget = report["board"]["budget"]
    within = all(report["resources"][k] is None or report["resources"][k] <= budget[k] for k in RESOURCES)
    assert report["fits"] == within == result["fits"]
    assert report["fps"] > 0 and report["latency_ms"] > 0
    assert report["tools"]["finn-plus"] == "1.6.1" and report["tools"]["vivado"] == "not used"
    assert report["folding"]["policy"].startswith("no --fps")


def test_bit_exact_chain_on_nano(nano):
    _, result = nano
    chain = result["report"]["chain"]
    assert result["bit_exact"] and chain["mismatches"] == [] and chain["clips"] == 2
    assert all(all(agree.values()) for agree in chain["agree"].values())


def test_build_configs_are_dataflow_build_configs(nano):
    out, _ = nano
    fields = set(DataflowBuildConfig.__dataclass_fields__)
    for graph in ("early", "later"):
        config = json.loads((out / "finn_build" / f"{graph}.json").read_text())
        assert set(config) <= fields
        assert set(config["steps"]) <= set(default_build_dataflow_steps)
        assert config["board"] == "KV260_SOM" and "bitfile" in config["generate_outputs"]
        assert (out / "finn_build" / config["folding_config_file"]).resolve() == (out / f"folding_config_{graph}.json").resolve()
    script = (out / "finn_build" / "build.sh").read_text()
    assert "finn build early.json ../finn_dataflow_early.onnx" in script


@pytest.mark.parametrize(("board", "bits", "message"), [("kv250", "w4a4", "did you mean kv260"),
                                                         ("kv260", "w4", "wXaY")])
def test_bad_arguments(tmp_path, board, bits, message):
    with pytest.raises(UserError, match=message):
        export_finn_bundle(Bundle(tmp_path / "b", "finn-x"), None, board, bits)
