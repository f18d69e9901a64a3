"""The calibration's two hot loops as one small C file, compiled on the machine that runs it.

The diffs search tries up to five fix positions per tensor and batch; in torch each try is five passes
over the tensor (scale, round, clamp, subtract, square-sum) plus the fake quantization after it, and on a
ViC-T 224 collage that cost twice the convolutions themselves. ``diffs_kernel.c`` does every candidate
in one pass and the fake quantization in another. No library offers vai_q's search, so it is ours.

It is built with the C compiler on the PATH (``$CC``, else ``cc``) into ``<venv>/vidconv_kernels``
(``$VIDCONV_KERNEL_DIR`` overrides), once per source, flags, compiler and CPU, under a temporary name
renamed into place, so parallel test workers never load a half-written library; ``-march=native`` is
safe because the key holds the CPU. Where no compiler works, or ``VIDCONV_NATIVE=0``, :func:`kernel`
is None and :mod:`~vidconv_deploy.fixpoint.arithmetic` computes the same values with torch.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("diffs_kernel.c")
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC")
#: The C kernel takes at most this many candidates in one pass (``MAX_SCOPE`` in the source).
MAX_SCOPE = 16


@dataclass(frozen=True)
class Kernel:
    """The loaded library's entry points (ctypes releases the GIL while they run)."""

    library: ctypes.CDLL
    path: Path

    def diffs_errors(self, x: torch.Tensor, start: int, scope: int) -> list[float]:
        """Sum of squared residuals ``t - clamp(round(t))``, ``t = x * 2**p``, for ``p`` in ``start .. start+scope-1``
        (in units of ``2**-p`` squared, as :func:`~vidconv_deploy.fixpoint.arithmetic.measure` sums them)."""
        x = _float32_contiguous(x)
        errors = (ctypes.c_double * scope)()
        if self.library.diffs_errors(ctypes.c_void_p(x.data_ptr()), x.numel(), start, scope, errors) != 0:
            raise ValueError(f"scope {scope} outside 1..{MAX_SCOPE}")
        return list(errors)

    def fake_quantize_half_up(self, x: torch.Tensor, pos: int) -> torch.Tensor:
        """``fake_quantize(x, pos, "half_up")`` in one pass."""
        x = _float32_contiguous(x)
        out = torch.empty_like(x)
        self.library.fake_quantize_half_up(ctypes.c_void_p(x.data_ptr()), x.numel(), pos, ctypes.c_void_p(out.data_ptr()))
        return out


def _float32_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float32).contiguous()


def kernel_dir() -> Path:
    return Path(os.environ.get("VIDCONV_KERNEL_DIR") or Path(sys.prefix) / "vidconv_kernels")


def _cpu_model() -> str:
    """The CPU's model name and instruction-set flags (a VM may hide AVX-512 on the same model), as the
    build key: ``-march=native`` code must not load where the instructions it uses are missing."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    found = [next((line for line in lines if line.startswith(key)), "") for key in ("model name", "flags")]
    return "\n".join(found) if any(found) else platform.processor() or platform.machine()


def _compiler_version(cc: str) -> str:
    done = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    return done.stdout.splitlines()[0] if done.returncode == 0 and done.stdout else ""


def _build() -> Path | None:
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        return None
    version = _compiler_version(cc)
    if not version:
        return None
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *FLAGS, version, _cpu_model()]).encode()).hexdigest()[:16]
    target = kernel_dir() / f"diffs_kernel-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        done = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(built), "-lm"], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            return None
        os.replace(built, target)
    return target


def _load(path: Path) -> Kernel:
    library = ctypes.CDLL(str(path))
    library.diffs_errors.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_double)]
    library.diffs_errors.restype = ctypes.c_int
    library.fake_quantize_half_up.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p]
    library.fake_quantize_half_up.restype = None
    return Kernel(library, path)


_lock = threading.Lock()
_loaded: dict[str, Kernel | None] = {}


def kernel() -> Kernel | None:
    """The compiled kernel, built on first use; None where ``VIDCONV_NATIVE=0`` or no C compiler works."""
    if os.environ.get("VIDCONV_NATIVE", "1") == "0":
        return None
    if "kernel" in _loaded:  # every activation of the calibration asks: no lock once it is settled
        return _loaded["kernel"]
    with _lock:
        if "kernel" not in _loaded:
            try:
                path = _build()
                _loaded["kernel"] = _load(path) if path is not None else None
            except (OSError, subprocess.SubprocessError):
                _loaded["kernel"] = None
        return _loaded["kernel"]
