"""A PyTorch module (a VidConv, its deploy rewrite, one of its halves, or the Brevitas FINN variant).

A module has no tensor names, so the runner is given them (as Polygraphy's ``PytRunner`` is): the
feeds are passed positionally in ``input_names`` order and the outputs (one tensor or a tuple)
named by ``output_names``. Brevitas layers return ``QuantTensor``s; their ``value`` is the float
tensor every other engine would give.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from vidconv_deploy.runners.base import Runner, Tensors


def _array(output: Any) -> np.ndarray:
    """A module output as numpy: a tensor, or a Brevitas QuantTensor's float ``value``."""
    return getattr(output, "value", output).detach().numpy()


class TorchRunner(Runner):
    """``module`` in eval mode under ``torch.no_grad``; the feeds keep their dtype (a float64 model takes float64)."""

    def __init__(self, module: nn.Module, input_names: Sequence[str] = ("input",), output_names: Sequence[str] = ("output",),
                 name: str | None = None) -> None:
        super().__init__(name or f"torch:{type(module).__name__}")
        self.module = module
        self._input_names, self._output_names = list(input_names), list(output_names)

    def _load(self) -> None:
        self.module.eval()

    @torch.no_grad()
    def _run(self, feeds: Mapping[str, np.ndarray]) -> Tensors:
        outputs = self.module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self._input_names))
        if isinstance(outputs, torch.Tensor) or hasattr(outputs, "value"):  # a QuantTensor is a tuple: not several outputs
            outputs = (outputs,)
        return {n: _array(o) for n, o in zip(self._output_names, outputs, strict=True)}
