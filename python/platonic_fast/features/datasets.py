"""Sample sources for feature extraction: a text file, an image folder, a HuggingFace dataset.

Each returns an indexable sequence that :func:`~platonic_fast.features.language` or
:func:`~platonic_fast.features.vision` accepts. Images are opened lazily, one at a time, so a
large folder or dataset never sits in memory whole.

>>> texts = text_file("captions.txt")                        # doctest: +SKIP
>>> images = image_folder("photos/")                         # doctest: +SKIP
>>> ds = hf_dataset("data/wit_1024")                         # doctest: +SKIP
>>> images, texts = column(ds, "image"), column(ds, "text")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def text_file(path: str | os.PathLike, *, skip_blank: bool = False) -> list[str]:
    """One sample per line of a UTF-8 text file (line endings removed).

    Parameters
    ----------
    path : str or os.PathLike
    skip_blank : bool, default False
        Drop blank lines. By default a blank line is an error: dropping it silently would shift
        every later sample against a paired image set.

    Returns
    -------
    list of str

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file is not UTF-8, is empty, or has a blank line (without ``skip_blank``).

    Examples
    --------
    >>> texts = text_file("captions.txt")                   # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no text file at {str(path)!r}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{str(path)!r} is not UTF-8 text: {e}") from e
    texts, numbers = TextLines(), []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            if skip_blank:
                continue
            raise ValueError(f"{str(path)!r} line {number} is blank; every line is one sample "
                             "(remove it, or skip blank lines: --skip-blank, skip_blank=True)")
        texts.append(line)
        numbers.append(number)
    if not texts:
        raise ValueError(f"{str(path)!r} holds no samples")
    texts.line_numbers = numbers
    texts.source = path
    texts.skip_blank = skip_blank
    return texts


class TextLines(list):
    """The lines of a text file (a plain ``list`` of str) that also know where they came from:
    ``provenance()`` fingerprints them by line number and text (see :mod:`.provenance`)."""

    line_numbers: list[int]
    source: Path
    skip_blank: bool = False

    def provenance(self) -> dict:
        from .provenance import RowHasher

        numbers = getattr(self, "line_numbers", None)
        if numbers is None or len(numbers) != len(self):  # edited since it was read: positions only
            from .provenance import content_provenance

            return content_provenance(self)
        h = RowHasher()
        for number, text in zip(numbers, self):
            h.add(str(number), text)  # as samples.from_text_file: the same lines, the same fingerprint
        return {"fingerprint": h.fingerprint(), "n": h.n, "id_format": "line",
                "spec": {"source": "text-file", "path": str(self.source.expanduser().resolve()),
                         "skip_blank": self.skip_blank}}


def natural_key(name: str) -> tuple:
    """Sort key for file names in natural order: ``im2`` before ``im10`` (digit runs compare as
    numbers, the rest case-insensitively; the name itself breaks ties)."""
    parts = re.split(r"(\d+)", name)
    return (tuple((0, int(p), "") if p.isdigit() else (1, 0, p.casefold()) for p in parts if p != ""), name)


class ImageFolder(Sequence):
    """The images of one folder in natural file-name order (``im2`` before ``im10``), opened as
    RGB PIL images on access.

    Parameters
    ----------
    path : str or os.PathLike
    suffixes : tuple of str
        File name endings counted as images (case-insensitive).

    Raises
    ------
    FileNotFoundError
        No such folder.
    ValueError
        The folder has no image files.

    Examples
    --------
    >>> images = ImageFolder("photos/")                      # doctest: +SKIP
    >>> len(images), images[0].size                          # doctest: +SKIP
    (1024, (640, 480))
    """

    def __init__(self, path: str | os.PathLike, suffixes: tuple[str, ...] = IMAGE_SUFFIXES):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"no image folder at {str(self.path)!r}")
        self.files = sorted((p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in suffixes),
                            key=lambda p: natural_key(p.name))
        if not self.files:
            raise ValueError(f"{str(self.path)!r} holds no image files (looked for {', '.join(suffixes)})")

    @property
    def names(self) -> list[str]:
        """The file names, in the order the images are read."""
        return [p.name for p in self.files]

    def provenance(self) -> dict:
        """Fingerprint by file name and file bytes, in reading order (see :mod:`.provenance`)."""
        from .provenance import FileContent, RowHasher

        h = RowHasher()
        for p in self.files:
            h.add(p.name, FileContent(p))
        return {"fingerprint": h.fingerprint(), "n": h.n, "id_format": "file",
                "spec": {"source": "image-folder", "path": str(self.path.expanduser().resolve())}}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return im.convert("RGB")

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.path)!r}, {len(self)} images)"


def image_folder(path: str | os.PathLike) -> ImageFolder:
    """The images of a folder, in natural file-name order (see :class:`ImageFolder`)."""
    return ImageFolder(path)


def _datasets():
    try:
        import datasets
    except ImportError as e:
        raise ImportError("reading HuggingFace datasets needs the 'datasets' package: pip install datasets") from e
    return datasets


def hf_dataset(name_or_path: str | os.PathLike, split: str | None = None, *, subset: str | None = None,
               revision: str | None = None, **load_kwargs: Any):
    """A HuggingFace dataset: one saved with ``save_to_disk``, a local folder of data files, or
    one on the hub (read from the local cache when offline).

    Parameters
    ----------
    name_or_path : str or os.PathLike
        A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (read with
        ``datasets.load_from_disk``), a folder of data files (parquet, json, csv, ... read by
        ``datasets.load_dataset``), or a hub id such as ``"minhuh/prh"`` (``load_dataset``,
        which reads the local cache; set ``HF_DATASETS_OFFLINE=1`` without network).
    split : str, optional
        The split to take from a dataset dictionary. Default: its only split, or "train".
    subset : str, optional
        The configuration (``name=`` of ``load_dataset``), e.g. a language of a multilingual set.
    revision : str, optional
        A hub branch, tag or commit (``revision=``); the paper's WIT set is
        ``hf_dataset("minhuh/prh", revision="wit_1024")``.
    **load_kwargs
        Passed to ``datasets.load_dataset``.

    Returns
    -------
    datasets.Dataset

    Raises
    ------
    ImportError
        ``datasets`` is not installed.
    FileNotFoundError
        ``name_or_path`` is spelled like a local path (``./x``, ``/x``, ``a/b/c``, or its parent
        folder exists) but does not exist: no hub look-up is made.
    ValueError
        ``split`` is not in the dataset; ``subset``/``revision`` given for a ``save_to_disk`` folder.

    Examples
    --------
    >>> ds = hf_dataset("minhuh/prh", split="train", revision="wit_1024")   # doctest: +SKIP
    >>> texts = column(ds, "text")                                         # doctest: +SKIP
    """
    from ._common import check_local_path

    datasets = _datasets()
    source = os.fspath(name_or_path)
    local = check_local_path(source, what="dataset")
    path = Path(source).expanduser()
    if local and path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        if subset is not None or revision is not None:
            raise ValueError(f"{source!r} is a folder written by save_to_disk: it has no subsets or revisions "
                             "(drop --subset/--revision, which apply to hub datasets and data-file folders)")
        ds = datasets.load_from_disk(str(path))
    else:
        if subset is not None:
            load_kwargs["name"] = subset
        if revision is not None:
            load_kwargs["revision"] = revision
        from ._common import hub_offline, hub_unreachable, offline_patch

        # Without network, a hub id fails at once (from the cache if it is there) instead of
        # retrying for ~25 s.
        offline = not local and (hub_offline() or hub_unreachable())
        try:
            with offline_patch() if offline else contextlib.nullcontext():
                ds = datasets.load_dataset(str(path) if local else source, split=split, **load_kwargs)
        except Exception as e:
            from ._common import _is_offline_error

            if local or not _is_offline_error(e):
                raise
            raise RuntimeError(f"dataset {source!r} is not cached locally and no network is reachable (or offline "
                               "mode is on); load it once on a machine with network access (it lands in the "
                               "HuggingFace cache, HF_HOME), or save it with save_to_disk and pass that folder"
                               ) from e
    if isinstance(ds, dict):  # DatasetDict
        if split is None:
            split = next(iter(ds)) if len(ds) == 1 else "train"
        if split not in ds:
            raise ValueError(f"split {split!r} is not in {source!r}; it has {sorted(ds)} (choose one with --split)")
        ds = ds[split]
    return ds


class Column(Sequence):
    """One column of a dataset, read row by row (images decode only when accessed)."""

    def __init__(self, dataset, name: str):
        names = getattr(dataset, "column_names", None)
        if names is not None and name not in names:
            raise ValueError(f"column {name!r} is not in the dataset; it has {list(names)}")
        self.dataset, self.name = dataset, name

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.dataset[int(i)][self.name]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


def column(dataset, name: str) -> Column:
    """A lazy view of ``dataset[name]``: ``column(ds, "image")``, ``column(ds, "text")``.

    Raises
    ------
    ValueError
        ``name`` is not a column of ``dataset``.
    """
    return Column(dataset, name)


# --- the built-in colour set ----------------------------------------------------------------

COLOUR_TEMPLATE = "The color {}."


def xkcd_srgb():
    """The 949 colour names of the XKCD colour survey and their sRGB values, as matplotlib ships them.

    Returns
    -------
    names : list of str
        Colour names without the ``"xkcd:"`` prefix, in matplotlib's order.
    rgb : np.ndarray, float64, shape (949, 3)
        sRGB in [0, 1].

    Raises
    ------
    ImportError
        matplotlib is not installed.

    Examples
    --------
    >>> names, rgb = xkcd_srgb()                            # doctest: +SKIP
    >>> names[0], rgb.shape                                 # doctest: +SKIP
    ('cloudy blue', (949, 3))
    """
    import numpy as np

    try:
        from matplotlib.colors import XKCD_COLORS, to_rgb
    except ImportError as e:
        raise ImportError("the built-in colour set needs matplotlib: pip install matplotlib") from e
    names = [key.removeprefix("xkcd:") for key in XKCD_COLORS]
    rgb = np.array([to_rgb(v) for v in XKCD_COLORS.values()], dtype=np.float64)
    return names, rgb


def colour_texts(template: str = COLOUR_TEMPLATE) -> list[str]:
    """One sentence per XKCD colour name, ``template.format(name)`` ("The color <name>.").

    Examples
    --------
    >>> colour_texts()[:2]                                  # doctest: +SKIP
    ['The color cloudy blue.', 'The color dark pastel green.']
    """
    return [template.format(n) for n in xkcd_srgb()[0]]


def colour_swatches(size: int = 32) -> list:
    """One plain ``size`` x ``size`` x 3 uint8 image per XKCD colour, in :func:`xkcd_srgb` order.

    Examples
    --------
    >>> colour_swatches()[0].shape                          # doctest: +SKIP
    (32, 32, 3)
    """
    import numpy as np

    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    rgb = xkcd_srgb()[1]
    return [np.broadcast_to((c * 255).round().astype(np.uint8), (size, size, 3)).copy() for c in rgb]
