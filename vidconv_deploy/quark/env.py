"""The one module that knows how AMD Quark 0.13 is set up here: where its compiled ops live, how it is kept quiet.

amd-quark is installed without its pins by ``scripts/quark-install.sh`` (it requires onnx <= 1.22;
quark.onnx runs with our onnx 1.23.2). On first import Quark compiles its custom ONNX Runtime ops
with torch's extension builder into ``$TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``);
we point it into the venv, where the install script built them, so an export never compiles them
and a removed venv leaves nothing behind. Everything else imports Quark through :func:`import_quark`
and runs it inside :func:`quark_session`.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from types import ModuleType

from vidconv_deploy.errors import UserError
from vidconv_deploy.version import package_versions

VERSION = "0.13"
#: Python packages whose versions a Quark bundle records (the quantization ran with exactly these).
PACKAGES = ("amd-quark", "onnx", "onnxruntime", "onnxslim", "torch")
INSTALL_FIX = "run scripts/quark-install.sh .venv/bin/python (amd-quark 0.13 next to our onnx 1.23, without its pins), then retry"


def quark_version() -> str | None:
    try:
        return metadata.version("amd-quark")
    except metadata.PackageNotFoundError:
        return None


def extensions_dir() -> Path:
    """Where Quark's custom ops are compiled: ``$TORCH_EXTENSIONS_DIR`` if set, else ``<venv>/torch_extensions``."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path(sys.prefix) / "torch_extensions")


def import_quark() -> ModuleType:
    """``quark.onnx``, with its ops compiled into :func:`extensions_dir` and its log at errors only.

    A missing or other amd-quark is a one-line :class:`UserError` with the fix.
    """
    found = quark_version()
    if found != VERSION:
        raise UserError(f"amd-quark {VERSION} is {'not installed' if found is None else f'needed, not {found}'}: {INSTALL_FIX}")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(extensions_dir()))
    os.environ.setdefault("QUARK_LOG_LEVEL", "error")  # read once, when quark's logger module is imported
    # stdout only: Quark's log handler keeps the stderr it finds at import, which must be the real one.
    with contextlib.redirect_stdout(io.StringIO()):
        import quark.onnx

    return quark.onnx


def versions() -> dict[str, str]:
    """Versions of the packages a Quark step ran with."""
    return package_versions(PACKAGES)


@contextlib.contextmanager
def quark_session() -> Iterator[io.StringIO]:
    """Run Quark quietly; yields what it printed (its summary tables, tqdm bars), for the bundle's log.

    Quark prints a configuration dump and rich tables on stdout and progress bars on stderr; a
    command-line tool keeps stdout for its own output and shows one progress bar.
    """
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield captured
