"""Hardware op-compliance checks for any ONNX model (``vidconv-check``)."""

from vidconv_deploy.check.checker import check_model
from vidconv_deploy.check.result import CheckResult, Finding
from vidconv_deploy.check.ruleset import list_targets

__all__ = ["CheckResult", "Finding", "check_model", "list_targets"]
