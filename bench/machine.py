"""What every benchmark records about the machine it ran on: a figure means little without the CPU and its load."""

from __future__ import annotations

import os
import platform
from typing import Any


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` is often empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine() -> dict[str, Any]:
    """CPU count, the cores this process may use, CPU model, platform and Python."""
    return {
        "os_cpu_count": os.cpu_count(),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform_processor": platform.processor(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the system has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def environment(load_before: list[float] | None) -> dict[str, Any]:
    """What every benchmark's JSON records besides its figures: threads, the ONNX Runtime session settings, the
    machine, its load before the run and now, and the package versions."""
    import numpy as np
    import onnx
    import onnxruntime
    import torch

    return {
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "onnxruntime_session": "CPUExecutionProvider, graph optimisations off (ORT_DISABLE_ALL), default threads, "
                               "no spinning after a run (vidconv_deploy.onnx_session)",
        "machine": machine(), "load_average_1_5_15": {"before": load_before, "after": load_average()},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
                     "numpy": np.__version__},
    }
