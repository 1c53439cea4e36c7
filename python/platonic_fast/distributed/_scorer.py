"""The scorer (:class:`platonic_fast.Alignment`) on row-sharded references and features."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..align import AlignResult, resolve_options
from ..metrics import metric_spec
from ..scorer import _layers_of
from ._align import prepare_layers, prepare_states, score_states
from ._comm import Comm


class Alignment:
    """:class:`platonic_fast.Alignment` with every reference and every scored model held as this
    rank's rows (collective: construct and call it on every rank of the group, in the same order).

    The references' layers and per-metric states are prepared once (sharded); each
    :meth:`score` prepares only the new features, and every rank gets the same results, equal
    to :func:`platonic_fast.distributed.align` (and so to one process on the concatenation).
    """

    def __init__(self, references: Mapping[str, Any], *, q: float = 0.95, exact: bool = False,
                 normalize: bool = True, concat: bool = False, device=None, group=None, timeout=None):
        if not isinstance(references, Mapping) or not references:
            raise TypeError("references must be a non-empty dict of name -> this rank's features, "
                            f"got {type(references).__name__}")
        for name in references:
            if not isinstance(name, str):
                raise TypeError(f"reference names must be str, got {name!r}")
        self._comm = Comm(group, timeout)
        self._prep = dict(q=q, exact=exact, normalize=normalize, concat=concat)
        self._order = list(references)  # results in the given order; work in sorted order (same on every rank)
        self._layers: dict[str, list[torch.Tensor]] = {}
        layout = None
        for name in sorted(references):  # the same order on every rank
            layers, lay = prepare_layers(self._comm, _layers_of(references[name]), f"references[{name!r}]",
                                         **self._prep)
            if device is not None:
                layers = [t.to(device) for t in layers]
            if layout is not None and lay.offsets != layout.offsets:
                raise ValueError(f"every reference must hold the same rows on every rank; references[{name!r}] "
                                 f"has offsets {lay.offsets}, another {layout.offsets}")
            layout = lay
            self._layers[name] = layers
        self._layout = layout
        self.n = layout.n
        self._states: dict[tuple, dict[str, list[Any]]] = {}

    @property
    def names(self) -> list[str]:
        return list(self._order)

    def clear_cache(self) -> None:
        self._states.clear()

    def score(self, features: Any, metric: str = "mutual_knn", topk: int = 10, *, backend: str = "auto",
              **metric_options) -> dict[str, AlignResult]:
        """Every layer of this rank's ``features`` rows against every reference layer (collective)."""
        metric_spec(metric)
        xs, layout = prepare_layers(self._comm, _layers_of(features), "features", **self._prep)
        if layout.offsets != self._layout.offsets:
            raise ValueError(f"features must hold the references' rows on every rank: offsets {layout.offsets}, "
                             f"the references have {self._layout.offsets}")
        opts = {}
        for layers in self._layers.values():
            opts = resolve_options(metric, self.n, [t.shape[1] for t in xs + layers], topk=topk, backend=backend,
                                   **metric_options)
        key = (metric, tuple(sorted(opts.items())))
        if key not in self._states:
            self._states[key] = {name: prepare_states(self._comm, self._layout, layers, metric, opts)
                                 for name, layers in self._layers.items()}
        states_x = prepare_states(self._comm, layout, xs, metric, opts)
        done = {name: score_states(states_x, ref, metric, opts, concat=self._prep["concat"])
                for name, ref in self._states[key].items()}
        return {name: done[name] for name in self._order}
