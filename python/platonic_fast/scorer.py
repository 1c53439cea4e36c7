"""Score a model's features against fixed reference models, again and again (e.g. while training).

:func:`platonic_fast.align` prepares both sides on every call. When the references never change,
their layers (outlier clamping, L2 normalisation) and per-metric states (neighbour lists, kernel
statistics, singular vectors) can be computed once: :class:`Alignment` keeps them, per metric
and options, so each :meth:`Alignment.score` call prepares only the new features' layers. The
numbers equal ``align(features, reference, ...)`` exactly: the same preparation, the same states,
the same pair scores and the same best-pair rule.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .align import AlignResult, layout_of_rows, prepare_layers, prepare_states, resolve_options, score_states
from .distributed._comm import LOCAL
from .metrics import metric_spec


def _layers_of(feats: Any) -> Any:
    """A Features object's layers; tensors, arrays and lists pass through."""
    layers = getattr(feats, "layers", None)
    return feats if layers is None else layers


class Alignment:
    """Alignment of new features against fixed reference models, preparing the references once.

    Parameters
    ----------
    references : dict of str -> features
        Reference model name -> its features of the same N samples: an N x L x D tensor or
        array, a list of N x D_l matrices, or a :class:`platonic_fast.features.Features`.
    q, exact : float, bool
        Outlier clamping before scoring (as :func:`platonic_fast.align`); ``q=1`` disables it.
    normalize : bool, default True
        L2-normalise every row of every layer.
    concat : bool, default False
        Also score the concatenation of all layers (index -1), on both sides.
    device : str or torch.device, optional
        Move the references there (the features scored must live on the same device).
    comm : optional
        A process group's communicator (:class:`platonic_fast.distributed.Alignment` passes it):
        every reference and every scored model is this rank's rows, and every call is collective.
        None: one process.

    Raises
    ------
    TypeError
        ``references`` is not a non-empty dict with str keys.
    ValueError
        A reference is malformed (see :func:`platonic_fast.align`), or the references do not
        all have the same N.

    Examples
    --------
    >>> refs = {"vit": torch.randn(500, 12, 768), "bert": torch.randn(500, 7, 384)}
    >>> scorer = Alignment(refs)
    >>> res = scorer.score(torch.randn(500, 4, 64), metric="mutual_knn", topk=10)
    >>> res["vit"].scores.shape, type(res["bert"].best)
    (torch.Size([4, 12]), <class 'float'>)
    """

    def __init__(self, references: Mapping[str, Any], *, q: float = 0.95, exact: bool = False,
                 normalize: bool = True, concat: bool = False, device=None, comm=None):
        if not isinstance(references, Mapping) or not references:
            raise TypeError("references must be a non-empty dict of name -> features (N x L x D tensor, "
                            f"list of N x D_l matrices or Features), got {type(references).__name__}")
        for name in references:
            if not isinstance(name, str):
                raise TypeError(f"reference names must be str, got {name!r}")
        self._comm = comm
        self._prep = dict(q=q, exact=exact, normalize=normalize, concat=concat, comm=comm)
        self._order = list(references)  # results in the given order, work in sorted order (every rank's)
        self._layers: dict[str, list[torch.Tensor]] = {}
        for name in sorted(references):
            layers = prepare_layers(_layers_of(references[name]), f"references[{name!r}]", **self._prep)
            if device is not None:
                layers = [t.to(device) for t in layers]
            self._layers[name] = layers
        counts = {name: self._layers[name][0].shape[0] for name in self._order}
        with (comm or LOCAL).step():  # equal on every rank: the same rows everywhere
            if len(set(counts.values())) != 1:
                raise ValueError(f"every reference must describe the same N samples; got N = {counts}"
                                 f"{'' if comm is None else ' (rows on this rank)'}")
        self._layout = None if comm is None else comm.layout(next(iter(counts.values())))
        self.n = next(iter(counts.values())) if comm is None else self._layout.n
        # (metric, options) -> reference name -> per-layer prepared states
        self._states: dict[tuple, dict[str, list[Any]]] = {}

    @property
    def names(self) -> list[str]:
        """The reference models' names."""
        return list(self._order)

    def clear_cache(self) -> None:
        """Forget the prepared reference states (the prepared layers are kept)."""
        self._states.clear()

    def _reference_states(self, metric: str, opts: dict) -> dict[str, list[Any]]:
        key = (metric, tuple(sorted(opts.items())))
        states = self._states.get(key)
        if states is None:
            states = {name: prepare_states(layers, metric, opts, comm=self._comm, layout=self._layout)
                      for name, layers in self._layers.items()}
            self._states[key] = states
        return states

    def score(self, features: Any, metric: str = "mutual_knn", topk: int = 10, *, backend: str = "auto",
              **metric_options) -> dict[str, AlignResult]:
        """Score every layer of ``features`` against every layer of every reference.

        Parameters
        ----------
        features : torch.Tensor (N, L, D), np.ndarray, list of (N, D_l) matrices, or Features
            The model being scored, on the references' N samples in the same order.
        metric : str, default "mutual_knn"
            Any of :data:`platonic_fast.SUPPORTED_METRICS`.
        topk : int, default 10
            Neighbours for the kNN metrics (names containing "knn", cknna included).
        backend : str, default "auto"
        **metric_options
            The metric's options (``kernel_metric``, ``unbiased``, ``cca_dim``, ...).

        Returns
        -------
        dict of str -> AlignResult
            Per reference: ``scores`` (float64, L_features x L_reference), ``best`` (0.0 when no
            pair scores above 0, as the reference) and ``best_layers`` (features layer,
            reference layer), exactly as ``platonic_fast.align(features, reference, ...)``.

        Raises
        ------
        ValueError
            Unknown metric, bad options (topk >= N, ...), malformed features or another N.

        Examples
        --------
        >>> scorer = Alignment({"ref": torch.randn(300, 6, 32)})
        >>> scorer.score(torch.randn(300, 3, 16), "cknna", topk=10)["ref"].best_layers   # doctest: +SKIP
        (2, 5)
        """
        metric_spec(metric)  # an unknown name fails before any work
        xs = prepare_layers(_layers_of(features), "features", **self._prep)
        layout = layout_of_rows(self._comm, xs, next(iter(self._layers.values())), ("features", "the references"))
        opts = {}
        for layers in self._layers.values():
            # Validated as align() does for each pair: against the narrowest layer of both sides
            # (it bounds svcca's cca_dim). The normalised options are the same for every pair.
            opts = resolve_options(metric, self.n, [t.shape[1] for t in xs + layers], topk=topk, backend=backend,
                                   **metric_options)
        reference_states = self._reference_states(metric, opts)
        states_x = prepare_states(xs, metric, opts, comm=self._comm, layout=layout)
        done = {name: score_states(states_x, ref_states, metric, opts, concat=self._prep["concat"])
                for name, ref_states in reference_states.items()}
        return {name: done[name] for name in self._order}
