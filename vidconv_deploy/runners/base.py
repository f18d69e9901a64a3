"""The one interface every way of executing a model implements (after Polygraphy's ``BaseRunner``).

A comparison (PyTorch vs ONNX Runtime, fake-quant vs the integer reference, Brevitas vs FINN, host
vs board) only means something when every side runs on the same feeds, so each engine hides behind
the same call: named numpy feeds in, named numpy outputs out. Construction is cheap and picklable
where the model is (a path, bytes, a ModelProto); :meth:`Runner.load` does the heavy work (a
session, an executor, an import of an optional package) once, on first need, so a Ray worker or a
host without the engine can hold runners it never runs.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping

import numpy as np

from vidconv_deploy.errors import UserError

#: Named arrays: a runner's feeds and its outputs.
Tensors = dict[str, np.ndarray]


class Runner(abc.ABC):
    """Executes one model: ``run(feeds) -> outputs``, both keyed by the model's tensor names.

    Subclasses implement :meth:`_load` (set ``_input_names``/``_output_names`` and build the
    engine) and :meth:`_run`; the base class makes loading idempotent and checks the feeds.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._loaded = False
        self._input_names: list[str] = []
        self._output_names: list[str] = []

    def load(self) -> None:
        """Build the engine; later calls do nothing."""
        if not self._loaded:
            self._load()
            self._loaded = True

    @property
    def input_names(self) -> list[str]:
        """The model's input names, in the model's order (loads the model)."""
        self.load()
        return list(self._input_names)

    @property
    def output_names(self) -> list[str]:
        """The model's output names, in the model's order (loads the model)."""
        self.load()
        return list(self._output_names)

    def run(self, feeds: Mapping[str, np.ndarray]) -> Tensors:
        """Run the model once on ``feeds`` (one array per input name); every output by name."""
        self.check_feeds(feeds)
        return self._run(feeds)

    def check_feeds(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Load, and refuse feeds whose names are not exactly the model's inputs (a typo would otherwise
        surface as an engine's own, less readable, error)."""
        self.load()
        missing = [n for n in self._input_names if n not in feeds]
        unknown = [n for n in feeds if n not in self._input_names]
        if missing or unknown:
            raise UserError(f"{self.name}: feeds {sorted(feeds)} do not match the model's inputs {self._input_names}"
                            f" (missing {missing}, unknown {unknown})")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @abc.abstractmethod
    def _load(self) -> None:
        """Build the engine and set the input and output names."""

    @abc.abstractmethod
    def _run(self, feeds: Mapping[str, np.ndarray]) -> Tensors:
        """Run on feeds whose names have been checked."""
