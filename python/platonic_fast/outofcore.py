"""Out-of-core layer search: feature files read block by block, never whole (docs/scale.md).

A model's features stay in their file (:class:`~platonic_fast.features.blocks.FeatureFile`:
safetensors or .npy, pages handed back after every read). :class:`StreamedLayers` finds each
layer's largest magnitude (with the NaN/Inf check) and clamp threshold in passes over row blocks
and applies the one preparation of :mod:`platonic_fast.preparation` to any block, so the prepared
layers are bitwise the in-memory ones. A metric's ``stream`` says how its state is made without
holding a layer: the neighbour metrics (CPU) run the one kNN pass over a
:class:`platonic_fast.rows.FileRows` (panels of query rows while key blocks stream from the file;
the lists are bitwise the in-memory ones), cka and unbiased_cka run the one HSIC accumulation of
:mod:`platonic_fast.ops.hsic` over it (O(N) statistics and a :class:`LayerRows` view read again
when a pair is scored: equal to in memory up to the order of float64 sums), and the others
prepare one whole layer at a time (on CUDA copied from pinned host blocks).

Peak memory: a 16 MiB query panel and a key block, 4 MiB pass blocks, the top-k merger's
candidates, O(N) statistics, the ordering pass's float64 rescoring (about 64 MiB) and the lists:
about 100 MB above torch's ~550 MB at N = 4,096, D = 768.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ._checks import ConstantFeaturesError, DegenerateInputWarning
from .features.blocks import FeatureFile, release_heap
from .metrics import METRICS, Prepared, metric_spec, prepare
from .ops.hsic import kernel_stats
from .ops.knn import more_candidates as _more_candidates
from .ops.outliers import radix_select, sample_quantiles
from .preparation import LayerScale, join, plan_layers
from .rows import FileRows

BLOCK_BYTES = 4 << 20  # float32 bytes per block of the statistics and threshold passes
PANEL_BYTES = 16 << 20  # query rows held at once by the streamed kNN (a key block is 3 MiB at D=768)


def _blocks(n: int, size: int):
    return [(s, min(n, s + size)) for s in range(0, n, size)]


class StreamedLayers:
    """The layers of one feature file as the layer search prepares them (outliers clamped, rows
    L2-normalised), produced a block of rows at a time.

    The threshold passes run when the object is made; nothing of the file is kept but O(N)
    per-sample statistics while they run, and the thresholds after.

    Parameters
    ----------
    source : FeatureFile or path
        The features (a path is opened here and closed by :meth:`close`).
    name : str
        For messages (``feats_x``, the file name).
    q, exact, normalize, concat
        As :func:`platonic_fast.align.prepare_layers`.
    own : bool, optional
        Close ``source`` with this object (default: only when it was opened here).

    Attributes
    ----------
    n : int
    num_layers : int
        Layers, the concatenation included (last) with ``concat``.
    widths : list[int]
    """

    def __init__(self, source, name: str = "features", *, q: float = 0.95, exact: bool = False,
                 normalize: bool = True, concat: bool = False, block_bytes: int = BLOCK_BYTES,
                 own: bool | None = None):
        release_heap()  # fixes the mmap threshold before the first pass allocates its blocks
        opened = not isinstance(source, FeatureFile)
        self._own = opened if own is None else own
        self.file = FeatureFile(source) if opened else source
        self.name, self.q, self.exact, self.normalize, self.concat = name, float(q), exact, normalize, concat
        self.block_bytes = block_bytes
        self.n = self.file.n
        f = self.file
        try:  # the one layer preparation, its maxima and thresholds found by passes over blocks
            tops = self._tops(None) if f.stacked else [self._tops(layer)[0] for layer in range(f.num_layers)]
            self.scales, self._join = plan_layers(tops, f.stacked, normalize, self._threshold)
        except BaseException:
            self.close()
            raise
        self.num_layers = f.num_layers + (1 if concat else 0)
        self.widths = list(f.widths) + ([sum(f.widths)] if concat else [])
        self._stats: dict[int, tuple] = {}
        release_heap()

    @property
    def thresholds(self) -> list:
        """Each stored layer's clamp value (0-d float32; None for q = 1)."""
        return [s.threshold for s in self.scales]

    # -- passes --------------------------------------------------------------------------------

    def _rows_per_block(self, width: int) -> int:
        # float32 after conversion: the block's working size, whatever the stored dtype
        return max(1, self.block_bytes // max(1, width * 4))

    def _width(self, layer) -> int:
        """Entries per row of one stored layer, or of every layer (``layer`` None)."""
        return self.file.num_layers * self.file.widths[0] if layer is None else self.file.widths[layer]

    def _passes(self, layer) -> list[tuple[int, int]]:
        return _blocks(self.n, self._rows_per_block(self._width(layer)))

    def _raw(self, layer, r0: int, r1: int) -> torch.Tensor:
        """Stored rows [r0, r1) as b x L x D: of every layer (``layer`` None), or of one (L = 1)."""
        return self.file.read_all(r0, r1) if layer is None else self.file.read(layer, r0, r1)[:, None]

    def _tops(self, layer) -> list[float]:
        """The NaN/Inf check and each layer's largest raw magnitude, in one pass."""
        lo = hi = None
        for r0, r1 in self._passes(layer):
            t = self._raw(layer, r0, r1)
            b_lo, b_hi = t.amin(dim=(0, 2)), t.amax(dim=(0, 2))
            lo = b_lo if lo is None else torch.minimum(lo, b_lo)
            hi = b_hi if hi is None else torch.maximum(hi, b_hi)
        if not (bool(torch.isfinite(lo).all()) and bool(torch.isfinite(hi).all())):
            where = "" if layer is None else f"[{layer}]"
            raise ValueError(f"{self.name}{where} contains NaN or Inf; clean or drop those samples first")
        return torch.maximum(-lo, hi).double().tolist()

    def _threshold(self, layer, pre: int) -> torch.Tensor | None:
        """The clamp value (0-d float32) of the whole tensor (``layer`` None) or of one layer, from
        blocks of its rows divided by 2**pre in float32."""
        if self.q == 1.0:
            return None

        def scaled():
            return (LayerScale(pre, None, 0).clamp(self._raw(layer, r0, r1)) for r0, r1 in self._passes(layer))

        if self.exact:
            return _radix_select(scaled, int(self.q * self.n * self._width(layer)))
        return torch.cat([sample_quantiles(t, self.q) for t in scaled()]).mean().to(torch.float32)

    # -- prepared rows -------------------------------------------------------------------------

    def _joined(self, read) -> torch.Tensor:
        """The concatenation's prepared rows; ``read(layer)`` gives a layer's raw rows, ``read(None)``
        the stacked file's b x L x D rows."""
        shifts, scale = self._join
        if self.file.stacked:  # as prepare_layers: the clamped N x L x D rows, flattened
            t = self.scales[0].clamp(read(None))
            return join([t.reshape(t.shape[0], -1)], [0], scale)
        return join([s.clamp(read(i)) for i, s in enumerate(self.scales)], shifts, scale)

    def block(self, layer: int, r0: int, r1: int) -> torch.Tensor:
        """Prepared rows [r0, r1) of ``layer`` (float32, contiguous)."""
        if layer == self.file.num_layers:  # the concatenation
            return self._joined(lambda i: self.file.read_all(r0, r1) if i is None else self.file.read(i, r0, r1))
        return self.scales[layer].rows(self.file.read(layer, r0, r1))

    def gather(self, layer: int, index) -> torch.Tensor:
        """Prepared rows at ``index`` (any order) of ``layer``."""
        if layer == self.file.num_layers:
            if self.file.stacked:
                return self._joined(lambda i: torch.stack(
                    [self.file.gather(j, index) for j in range(self.file.num_layers)], dim=1))
            return self._joined(lambda i: self.file.gather(i, index))
        return self.scales[layer].rows(self.file.gather(layer, index))

    def rows_per_block(self, layer: int) -> int:
        return self._rows_per_block(self.widths[layer])

    def layer(self, layer: int, device=None) -> torch.Tensor:
        """The whole prepared layer (N x D float32), on ``device`` (CUDA: through :class:`LayerRows`'s
        pinned buffers, copies overlapped with the reads)."""
        view = LayerRows(self, layer, device=device)
        out = torch.empty(self.n, self.widths[layer], dtype=torch.float32, device=view.device)
        for r0, r1 in _blocks(self.n, self.rows_per_block(layer)):
            out[r0:r1] = view[r0:r1]
        return out

    def stats(self, layer: int) -> tuple[float, bool]:
        """(largest |entry|, constant) of a prepared layer: one pass over its blocks."""
        return self._layer_stats(layer)[:2]

    def column_sums(self, layer: int) -> torch.Tensor:
        """Σ over samples of each column of a prepared layer (float64), from the pass of :meth:`stats`."""
        return self._layer_stats(layer)[2]

    def _layer_stats(self, layer: int) -> tuple[float, bool, torch.Tensor]:
        if layer not in self._stats:
            lo = hi = None
            total = torch.zeros(self.widths[layer], dtype=torch.float64)
            for r0, r1 in _blocks(self.n, self.rows_per_block(layer)):
                t = self.block(layer, r0, r1)
                b_lo, b_hi = torch.aminmax(t, dim=0)
                lo = b_lo if lo is None else torch.minimum(lo, b_lo)
                hi = b_hi if hi is None else torch.maximum(hi, b_hi)
                total += t.sum(dim=0, dtype=torch.float64)
            top = max(0.0, -float(lo.min()), float(hi.max()))
            self._stats[layer] = (top, self.n >= 2 and bool((lo == hi).all()), total)
        return self._stats[layer]

    def close(self) -> None:
        if self._own:
            self.file.close()

    def __enter__(self) -> "StreamedLayers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _radix_select(blocks, position: int) -> torch.Tensor:
    """:func:`platonic_fast.ops.outliers.radix_select` of float32 blocks (the threshold pass's)."""
    return radix_select(lambda: (t.reshape(-1) for t in blocks()), position, torch.float32)


class LayerRows:
    """One prepared layer of a :class:`StreamedLayers` as an N x D matrix whose rows are read from
    the file when indexed (``rows[r0:r1]``, ``rows[index]``): the view a
    :class:`platonic_fast.rows.FileRows` reads. Each row read is taken to ``dtype``, has ``shift``
    subtracted (HSIC's centring) and is divided by ``2**e``, the in-memory steps in their order;
    ``order`` permutes the rows. On a CUDA ``device`` each block is prepared on the host and
    copied through one of two pinned buffers without waiting. Nothing read is kept (the states
    holding these views live as long as the sweep).
    """

    def __init__(self, layers: StreamedLayers, layer: int, e: int = 0, *, shift: torch.Tensor | None = None,
                 dtype: torch.dtype = torch.float32, order: torch.Tensor | None = None, device=None):
        self.layers, self.layer, self.e, self.order = layers, layer, e, order
        self.shape = (layers.n, layers.widths[layer])
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.shift = None if shift is None else shift.to("cpu")  # applied on the host, before the copy
        self.dtype = dtype
        self._staging: list = []  # CUDA: two pinned host buffers and the events of their last copies

    def __getitem__(self, index) -> torch.Tensor:
        if self.layers.file.closed:
            raise ValueError(f"{self.layers.file.path} was closed: out-of-core states read their features "
                             f"file when scored, so keep it open until every score is taken")
        if isinstance(index, slice):
            r0, r1, step = index.indices(self.shape[0])
            if step != 1:
                raise IndexError("LayerRows takes contiguous slices only")
            if self.order is None:
                return self._finish(self.layers.block(self.layer, r0, r1))
            return self._finish(self.layers.gather(self.layer, self.order[r0:r1]))
        index = torch.as_tensor(index)
        return self._finish(self.layers.gather(self.layer, index if self.order is None else self.order[index]))

    def _finish(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.dtype)
        if self.shift is not None:
            t = t - self.shift
        t = t * (2.0 ** -self.e) if self.e else t
        return t if self.device.type != "cuda" else self._to_device(t)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if not self._staging or self._staging[0][0].numel() < t.numel():
            self._staging = [[torch.empty(t.numel(), dtype=t.dtype, pin_memory=True), None] for _ in range(2)]
        slot = self._staging[0]
        self._staging.reverse()  # alternate buffers
        buf, done = slot
        if done is not None:
            done.synchronize()  # the copy that last used this buffer has finished
        host = buf[: t.numel()].view(t.shape)
        host.copy_(t)
        with torch.cuda.device(self.device):
            out = torch.empty(t.shape, dtype=t.dtype, device=self.device)
            out.copy_(host, non_blocking=True)
            slot[1] = torch.cuda.Event()
            slot[1].record()
        return out

    @property
    def block_rows(self) -> int:
        """Rows per block of a pass over the file."""
        return self.layers.rows_per_block(self.layer)

    def _view(self, **changes) -> "LayerRows":
        kw = dict(e=self.e, shift=self.shift, dtype=self.dtype, order=self.order, device=self.device)
        kw.update(changes)
        return LayerRows(self.layers, self.layer, **kw)

    def permuted(self, perm: torch.Tensor) -> "LayerRows":
        """The rows in the order ``perm`` (a view: nothing is read here)."""
        perm = perm.to("cpu")
        return self._view(order=perm if self.order is None else self.order[perm])

    def scaled(self, e: int) -> "LayerRows":
        """The rows divided by 2**e more (a view)."""
        return self._view(e=self.e + e)

    def centred(self, dtype: torch.dtype) -> "LayerRows":
        """The unscaled rows in ``dtype`` minus their column means (from the statistics pass)."""
        mean = (self.layers.column_sums(self.layer) / self.layers.n).to(dtype)
        return self._view(e=0, shift=mean, dtype=dtype)


def streamable(metric: str, opts: dict, device=None) -> bool:
    """Whether ``metric``'s layers are prepared without ever being whole: a neighbour metric
    whose kNN would run on the compiled CPU backend (the streamed kNN), or cka / unbiased_cka
    (states that read their features from the file when scored, on the CPU or copied block by
    block to a CUDA device); otherwise one whole layer at a time."""
    from ._backends import for_op, resolve

    stream = METRICS[metric].stream
    if stream == "hsic":  # torch GEMMs over blocks, on the CPU or a CUDA device
        return opts.get("backend", "auto") in ("auto", "cpu", "torch")
    if stream != "neighbours" or (device is not None and torch.device(device).type != "cpu"):
        return False
    try:
        name, _ = resolve("knn", for_op("knn", opts.get("backend", "auto"), METRICS[metric].ops),
                          torch.device("cpu"), dtypes=(torch.float32,), k=opts["topk"])
    except ValueError:
        return False
    return name == "cpu"


def stream_neighbours(layers: StreamedLayers, layer: int, k: int, *, exclude_self: bool = True,
                      panel_bytes: int = PANEL_BYTES):
    """Exact kNN of one prepared layer, streamed from its file: ``(values, indices, e)`` equal to
    :func:`platonic_fast.ops.knn.neighbours` of the whole layer (true scores ``values · 2**e``).

    The one pass of :func:`platonic_fast.ops.knn.search_rows` over a
    :class:`platonic_fast.rows.FileRows`: the in-memory CPU backend's tiles (the upper triangle
    only, each tile merged into its rows and its columns), grouped into panels of query rows
    held while every later key block is read once; then the same ordering pass.
    """
    from .ops.knn import search_rows

    rows = FileRows(LayerRows(layers, layer), layers.stats(layer)[0], panel_bytes=panel_bytes)
    # late binding: the ordering pass asks this module for more candidates (tests count the calls)
    return search_rows(rows, None, k, exclude_self=exclude_self, backend="cpu",
                       more=lambda *a: _more_candidates(*a))


# --- preparing a file ---------------------------------------------------------------------------


def prepare_file(source, metric: str, opts: dict, *, name: str | None = None, q: float = 0.95,
                 exact: bool = False, concat: bool = False, device=None, bar=None,
                 panel_bytes: int = PANEL_BYTES) -> list:
    """Every layer of a feature file prepared for ``metric`` (validated options ``opts``, as
    :func:`platonic_fast.align.resolve_options` gives them), out of core: the states
    :func:`platonic_fast.align.prepare_states` gives for the layers of
    :func:`platonic_fast.align.prepare_layers`, equal to them, without the file ever in memory.

    Parameters
    ----------
    source : path, FeatureFile or StreamedLayers
        A .safetensors features file or a .npy array (N x L x D or N x D).
    metric : str
    opts : dict
    name : str, optional
        For messages (default: the file name).
    q, exact, concat
        As :func:`platonic_fast.align`.
    device : optional
        Where the states live; on CUDA each layer is prepared whole on the device.
    bar : tqdm, optional
        Advanced once per layer.

    Returns
    -------
    list of Prepared (None for a constant layer, with a DegenerateInputWarning)
        For cka / unbiased_cka on the CPU the states read the file whenever they are scored:
        a ``source`` given as a path stays open while they live; a given reader must stay open
        until every score is taken.
    """
    layers = source if isinstance(source, StreamedLayers) else StreamedLayers(
        source, name or Path(getattr(source, "path", source)).name, q=q, exact=exact, concat=concat)
    keep = False
    try:
        spec = metric_spec(metric)
        stream = streamable(metric, opts, device)
        states = []
        for i in range(layers.num_layers):
            states.append(_prepare_layer(layers, i, spec, opts, stream, device, panel_bytes))
            release_heap()
            if bar is not None:
                bar.update()
        keep = reads_file(metric, opts, device)
        return states
    finally:
        if layers is not source and not keep:  # streamed HSIC states read the file when scored:
            layers.close()                      # it closes with them (when they are dropped)


def _prepare_layer(layers: StreamedLayers, i: int, spec, opts: dict, stream: bool, device, panel_bytes: int):
    if not stream:
        try:
            return prepare(spec.name, layers.layer(i, device), **opts)
        except ConstantFeaturesError:
            return _warn_constant(i)
    if layers.stats(i)[1]:
        return _warn_constant(i)
    n, d = layers.n, layers.widths[i]
    o = spec.check_options(n, (d, d), opts)
    if spec.stream == "hsic":  # O(N) statistics; the features a view read again when a pair is scored
        view = FileRows(LayerRows(layers, i, device=device), layers.stats(i)[0])
        state = kernel_stats(view, o["kernel_metric"], o["rbf_sigma"])
    else:
        vals, idx, e = stream_neighbours(layers, i, o["topk"], exclude_self=o.get("unbiased", True),
                                         panel_bytes=panel_bytes)
        state = spec.from_lists(idx, vals, e, o)
    return Prepared(spec.name, o, state, n, d)


def _warn_constant(i: int) -> None:
    """Warn of a constant layer (its state is None)."""
    warnings.warn(f"layer {i} is constant (all samples equal): its scores are NaN", DegenerateInputWarning,
                  stacklevel=4)


def align_files(file_x, file_y, metric: str = "mutual_knn", topk: int = 10, *, q: float = 0.95,
                exact: bool = False, concat: bool = False, backend: str = "auto", rows=None,
                permutations: int | None = None, alpha: float = 0.05, generator=None, **metric_options):
    """:func:`platonic_fast.align` of two feature files, out of core (see this module).

    Parameters
    ----------
    file_x, file_y : path
        .safetensors features files (:func:`platonic_fast.features.save`) or .npy arrays
        (N x L x D, or N x D for one layer) of the same N samples.
    rows : array of int, optional
        Score only these samples (increasing row numbers).
    metric, topk, q, exact, concat, backend, permutations, alpha, generator, **metric_options
        As :func:`platonic_fast.align`.

    Returns
    -------
    AlignResult
        Equal to ``align`` of the two files' features loaded whole.

    Examples
    --------
    >>> res = align_files("feats/a.safetensors", "feats/b.npy", "mutual_knn", topk=10)   # doctest: +SKIP
    """
    from .align import resolve_options, score_states
    from .calibration import calibrate_states, exact_chance

    fx, fy = FeatureFile(file_x, rows), FeatureFile(file_y, rows)
    try:  # open until the scores are taken: streamed HSIC states read their features when scored
        if fx.n != fy.n:
            raise ValueError(f"file_x and file_y must describe the same samples: got N={fx.n} and N={fy.n}")
        sx = StreamedLayers(fx, "file_x", q=q, exact=exact, concat=concat)
        sy = StreamedLayers(fy, "file_y", q=q, exact=exact, concat=concat)
        opts = resolve_options(metric, fx.n, sx.widths + sy.widths, topk=topk, backend=backend, **metric_options)
        states_x = prepare_file(sx, metric, opts)
        states_y = prepare_file(sy, metric, opts)
        result = score_states(states_x, states_y, metric, opts, concat=concat)
        result.chance = exact_chance(states_x, states_y, metric, opts)
        if permutations is not None:
            result.calibration = calibrate_states(states_x, states_y, result.scores, metric, opts,
                                                  permutations=permutations, alpha=alpha, generator=generator)
    finally:
        fx.close()
        fy.close()
    return result


def reads_file(metric: str, opts: dict, device=None) -> bool:
    """Whether ``metric``'s out-of-core states read their file when scored (streamed HSIC): the
    file must then stay open until every score is taken."""
    return METRICS[metric].stream == "hsic" and streamable(metric, opts, device)


def memory_available() -> int | None:
    """Bytes of memory available to new allocations (Linux MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


__all__ = ["LayerRows", "StreamedLayers", "align_files", "prepare_file", "reads_file", "stream_neighbours",
           "streamable"]
