"""Where a sweep's layers come from, chosen once per sweep: in memory (the file mapped, the
layers prepared whole), out of core (a block of rows at a time, :mod:`platonic_fast.outofcore`)
or sharded (each rank its rows, prepared collectively: :mod:`platonic_fast.distributed._sweep`).

A source turns a model's file into its prepared layer states (:meth:`LayerSource.states`) and,
for confidence intervals, its clamped and normalised layers (:meth:`LayerSource.layers`); the
sweep never asks how.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .align import prepare_layers, prepare_states
from .features.inputs import STREAMED_SUFFIXES, load_layers, open_verified


class LayerSource:
    """Prepared states of one model file at a time, on the samples ``rows`` (None: all)."""

    def __init__(self, fingerprints: dict, rows, n: int, *, device, q: float, exact: bool, concat: bool,
                 metric: str, opts: dict, keep_layers: bool, verified: set):
        self.fingerprints, self.rows, self.n, self.device = fingerprints, rows, n, device
        self.q, self.exact, self.concat, self.metric, self.opts = q, exact, concat, metric, opts
        self.keep_layers, self.verified = keep_layers, verified
        self._layers: dict[Path, object] = {}

    def states(self, path: Path, bar=None) -> list:
        """``bar``: a progress bar advanced once per layer prepared (or None)."""
        raise NotImplementedError

    def layers(self, path: Path):
        """The clamped, normalised layers (indexable by layer; -1 the concatenation) kept for
        confidence intervals, or None."""
        return self._layers.get(path)

    def close(self) -> None:
        """Release what the source holds open."""


class InMemory(LayerSource):
    """The file mapped, the layers clamped, normalised and prepared whole."""

    def states(self, path: Path, bar=None) -> list:
        layers = take_rows(load_layers(path, self.fingerprints[path]), self.rows)
        if self.device is not None:
            layers = [l.to(self.device) for l in layers] if isinstance(layers, list) else layers.to(self.device)
        layers = prepare_layers(layers, path.name, q=self.q, exact=self.exact, concat=self.concat)
        if self.keep_layers:
            self._layers[path] = layers
        return prepare_states(layers, self.metric, self.opts, bar=bar)


class OutOfCore(InMemory):
    """.safetensors and .npy files read a block of rows at a time; other files in memory."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._open: list = []  # readers kept open until the sweep ends

    def states(self, path: Path, bar=None) -> list:
        if path.suffix not in STREAMED_SUFFIXES:
            return super().states(path, bar)
        from .outofcore import StreamedLayers, prepare_file, reads_file

        f = open_verified(path, self.fingerprints[path], self.rows, self.verified)
        layers = StreamedLayers(f, path.name, q=self.q, exact=self.exact, concat=self.concat, own=True)
        self._open.append(layers)
        states = prepare_file(layers, self.metric, self.opts, device=self.device, bar=bar)
        if self.keep_layers:
            self._layers[path] = _LayerLoader(layers, self.device)
        elif not reads_file(self.metric, self.opts, self.device):  # else open until scored
            layers.close()
        return states

    def close(self) -> None:
        for layers in self._open:
            layers.close()
        self._open.clear()


class Sharded(LayerSource):
    """This rank's rows of every file, prepared collectively over the process group."""

    def __init__(self, shard, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.shard = shard

    def states(self, path: Path, bar=None) -> list:
        return self.shard.prepare(lambda: load_layers(path, self.fingerprints[path]), take_rows, self.rows, self.n,
                                  path.name, device=self.device, q=self.q, exact=self.exact, concat=self.concat,
                                  metric=self.metric, opts=self.opts)


def choose_source(inputs: dict, shard, **kwargs) -> LayerSource:
    """The sweep's one source: sharded under torchrun, out of core when chosen, else in memory."""
    if shard is not None:
        return Sharded(shard, inputs["fingerprints"], **kwargs)
    cls = OutOfCore if inputs["out_of_core"] else InMemory
    return cls(inputs["fingerprints"], **kwargs)


def take_rows(layers, rows):
    """The samples ``rows`` (increasing indices; None: all) of a model's layers."""
    if rows is None:
        return layers
    index = torch.from_numpy(np.asarray(rows))
    return [l[index] for l in layers] if isinstance(layers, list) else layers[index]


class _LayerLoader:
    """A model's prepared layers read whole on demand from its out-of-core reader (the two
    layers of a confidence interval)."""

    def __init__(self, layers, device):
        self.layers, self.device = layers, device

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.layers.layer(i % self.layers.num_layers, self.device)


def choose_out_of_core(flag: bool | None, files) -> bool:
    """``out_of_core`` as given, or (None) whether the largest .safetensors / .npy file exceeds a quarter
    of the memory available: held whole, a model's layers take several times their file."""
    if flag is not None:
        return flag
    from .outofcore import memory_available

    sizes = [os.path.getsize(f) for f in files if Path(f).suffix in STREAMED_SUFFIXES]
    avail = memory_available()
    return bool(sizes) and avail is not None and max(sizes) > avail / 4
