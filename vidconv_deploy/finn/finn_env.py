"""The one module that knows how finn-plus 1.6.1 must be set up to run here (no Vivado, no ``finn`` CLI).

Everything else imports finn-plus through :func:`require_finn` and runs its transformations inside
:func:`finn_session`. The work-arounds below are the complete list; each finn_report repeats them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from importlib import metadata

from vidconv_deploy.errors import UserError
from vidconv_deploy.version import package_versions

#: What we do differently from a plain ``finn build``, and why (sources: finn-plus 1.6.1 files named).
WORKAROUNDS: tuple[str, ...] = (
    "no FINN settings: CreateDataflowPartition gets an explicit partition_model_dir, so nothing calls "
    "finn/util/settings.py get_settings() (which needs the `finn` CLI or FINN_BUILD_DIR)",
    "finn.builder.build_dataflow_steps is not imported (importing it needs scikit-learn, for finn-plus's "
    "empirical QoR models, which the estimate flow does not use); vidconv_deploy/finn/flow.py applies the "
    "same transformations in the builder's order with its default configuration",
    "InferReshape is skipped: finn/custom_op/fpgadataflow/__init__.py registers no 'Reshape' op, so the "
    "transformation raises KeyError on any static Reshape; a Reshape left over is reported unmapped",
    "StreamlinePlus's transformations run in its order to a fixpoint in our own loop, plus "
    "AbsorbTransposeIntoResize (finn/transformation/streamline/absorb.py) for the temporal tile's Resize: "
    "its ComposedTransformation deep-copies the model and re-infers shapes after every transformation "
    "(over a minute per pass on vic-nano's later graph) and never settles while a scalar Mul and a "
    "Transpose remain at the graph output (they swap each round), so the host-side input quantizer, "
    "output scale and boundary layout Transposes are peeled off first",
    "no tool from the Vivado suite ran: cycle estimates of OuterShuffle assume Vivado 2024.2 or newer "
    "(finn-plus's own assumption when XILINX_VIVADO is unset)",
)

#: Python packages whose versions a FINN bundle records (the flow ran with exactly these).
PACKAGES = ("finn-plus", "qonnx", "brevitas", "onnx", "onnxruntime", "torch")


def finn_installed() -> bool:
    """Whether finn-plus can be imported here."""
    try:
        metadata.version("finn-plus")
    except metadata.PackageNotFoundError:
        return False
    return True


def require_finn() -> None:
    """Raise a one-line :class:`UserError` with the fix when finn-plus is missing."""
    if not finn_installed():
        raise UserError("finn-plus is not installed: run scripts/finn-install.sh (installs finn-plus 1.6.1 "
                        "next to our onnx/onnxruntime without its pins), then retry")


def versions() -> dict[str, str]:
    """Versions of the packages that ran; Vivado is named only as absent (never a version that did not run)."""
    found = package_versions(PACKAGES)
    found["vivado"] = "not used" if not os.environ.get("XILINX_VIVADO") else "present, not used (estimates only)"
    return found


FINN_LOGGER = "finn_logger"  # finn/util/logging.py
#: Loggers silenced during the flow: finn-plus's per-node warnings, and torch's ONNX exporter listing
#: torchvision ops it skips on every Brevitas QONNX export (torchvision is not a dependency).
QUIET_LOGGERS = (FINN_LOGGER, "torch.onnx._internal.exporter._registration")


@contextlib.contextmanager
def finn_session() -> Iterator[io.StringIO]:
    """Run finn-plus transformations quietly; yields what they printed (callers may keep it as a log).

    finn-plus prints progress on stdout and a warning per node on its logger; a command-line tool
    must keep stdout for its own output. Use :func:`finn_warnings` to keep a step's warnings.
    """
    require_finn()
    captured = io.StringIO()
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    saved = [(logger.level, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
        logger.propagate = False
    try:
        with contextlib.redirect_stdout(captured), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield captured
    finally:
        for logger, (level, propagate) in zip(loggers, saved):
            logger.setLevel(level)
            logger.propagate = propagate


class _Collect(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(" ".join(record.getMessage().split()))


@contextlib.contextmanager
def finn_warnings() -> Iterator[list[str]]:
    """Collect the warnings finn-plus logs inside the block (e.g. SetFolding missing its target)."""
    logger = logging.getLogger(FINN_LOGGER)
    sink: list[str] = []
    handler, level = _Collect(sink), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        yield sink
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
