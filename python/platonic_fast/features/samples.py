"""Sample sets with an identity: the rows of one data source, their texts and/or images.

A :class:`SampleSet` is what ``platonic-fast extract`` reads: the rows of a text file, an image
folder, a text file paired line by line with an image folder, a HuggingFace dataset (with its
revision, subset, split, columns and caption index), or the built-in colour set. Its
:attr:`SampleSet.texts` and :attr:`SampleSet.images` are the sequences the extractors read; both
carry the set's provenance, so language and vision features of the same rows record the same
sample fingerprint (see :mod:`.provenance`), and ``measure`` can tell paired sets from mispaired
ones. :meth:`SampleSet.manifest` lists the rows in order (written beside the features).

>>> s = load_samples(texts="captions.txt", images="photos/")        # doctest: +SKIP
>>> s.fingerprint, len(s), s.ids[:3]                                # doctest: +SKIP
('samples-sha256:...', 1024, ['1:im0.jpg', '2:im1.jpg', '3:im2.jpg'])
>>> f = features.language("bigscience/bloomz-560m", s.texts)        # doctest: +SKIP
>>> g = features.vision("vit_base_patch16_224.augreg_in21k", s.images)   # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from . import datasets as D
from .provenance import FileContent, RowHasher

MANIFEST_FORMAT = "platonic_fast.samples"


class Samples(Sequence):
    """One modality's view of a :class:`SampleSet`: ``texts`` (str) or ``images`` (PIL), lazily read."""

    def __init__(self, owner: SampleSet, modality: str, get: Callable[[int], Any]):
        self.owner, self.modality, self._get = owner, modality, get

    def __len__(self) -> int:
        return len(self.owner.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._get(self.owner.rows[i])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def provenance(self) -> dict:
        return self.owner.provenance(self.modality)

    def __repr__(self) -> str:
        return f"Samples({self.modality}, {len(self)} of {self.owner.label})"


class SampleSet:
    """Rows of one source. Build with :func:`load_samples` (or the ``from_*`` functions).

    Attributes
    ----------
    texts, images : Samples or None
        What language and vision models read (None when the source has no such column).
    ids : list of str
        Row ids in order (line numbers, file names, ``line:file``, dataset row indices).
    spec : dict
        How the rows were chosen (source, path or hub id, revision, subset, split, limit, ...).
    fingerprint : str
        Sample fingerprint over the ordered ids and every row's whole content.
    """

    def __init__(self, *, n: int, row_id: Callable[[int], str], content: Callable[[int], tuple], spec: dict,
                 id_format: str, text: Callable[[int], str] | None = None, image: Callable[[int], Any] | None = None,
                 modality_spec: dict | None = None):
        self.rows = list(range(n))
        self._row_id, self._content = row_id, content
        self.spec, self.id_format = dict(spec), id_format
        self.modality_spec = modality_spec or {}
        self.texts = Samples(self, "language", text) if text is not None else None
        self.images = Samples(self, "vision", image) if image is not None else None
        self._fingerprint: str | None = None
        self.caption_default = False  # texts are caption 0 of lists, by default (not chosen)

    @property
    def label(self) -> str:
        return str(self.spec.get("label") or self.spec.get("path") or self.spec.get("hub_id") or self.spec["source"])

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ids(self) -> list[str]:
        return [self._row_id(r) for r in self.rows]

    def keep(self, rows: list[int]) -> None:
        self.rows = rows
        self._fingerprint = None

    def limit(self, n: int | None) -> SampleSet:
        """Keep the first ``n`` rows (in place; returns self)."""
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"limit must be a positive int, got {n!r}")
            self.keep(self.rows[:n])
            self.spec["limit"] = n
        return self

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = RowHasher()
            for r in self.rows:
                h.add(self._row_id(r), *self._content(r))
            self._fingerprint = h.fingerprint()
        return self._fingerprint

    def spec_for(self, modality: str) -> dict:
        return {**self.spec, **self.modality_spec.get(modality, {})}

    def provenance(self, modality: str | None = None) -> dict:
        return {"fingerprint": self.fingerprint, "n": len(self), "id_format": self.id_format,
                "spec": self.spec_for(modality) if modality else dict(self.spec)}

    def manifest(self, modality: str | None = None) -> dict:
        """The rows in order, with the spec and fingerprint: written beside the features."""
        return {"format": MANIFEST_FORMAT, **self.provenance(modality), "ids": self.ids}

    def write_manifest(self, path: str | os.PathLike, modality: str | None = None) -> Path:
        import json

        from ..files import write_atomic

        text = json.dumps(self.manifest(modality), indent=1, ensure_ascii=False)
        return write_atomic(path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))

    def __repr__(self) -> str:
        kinds = "+".join(k for k, v in (("texts", self.texts), ("images", self.images)) if v is not None)
        return f"SampleSet({self.label}: {len(self)} rows, {kinds})"


# --- sources ----------------------------------------------------------------------------------------


def _abs(path: str | os.PathLike) -> str:
    """Paths are recorded absolute: the same relative name from another folder is other data."""
    return str(Path(path).expanduser().resolve())


def from_text_file(path: str | os.PathLike, skip_blank: bool = False) -> SampleSet:
    """Lines of a UTF-8 text file, one row each (ids: line numbers)."""
    lines = D.text_file(path, skip_blank=skip_blank)
    numbers = lines.line_numbers
    return SampleSet(n=len(lines), row_id=lambda r: str(numbers[r]), content=lambda r: (lines[r],),
                     spec={"source": "text-file", "path": _abs(path), "skip_blank": skip_blank}, id_format="line",
                     text=lambda r: lines[r])


def from_image_folder(path: str | os.PathLike) -> SampleSet:
    """Images of a folder in natural order, one row each (ids: file names; content: file bytes)."""
    folder = D.image_folder(path)
    files = folder.files
    return SampleSet(n=len(folder), row_id=lambda r: files[r].name, content=lambda r: (FileContent(files[r]),),
                     spec={"source": "image-folder", "path": _abs(path)}, id_format="file", image=folder.__getitem__)


def from_paired_files(texts: str | os.PathLike, images: str | os.PathLike, skip_blank: bool = False) -> SampleSet:
    """Line i of ``texts`` with image i of ``images`` (natural order): one row each, same count required.

    With ``skip_blank`` a blank line drops its row, image included (pairing stays by position).
    """
    lines = Path(texts)
    raw = D.text_file(lines, skip_blank=True)  # every non-blank line; blank ones are checked below
    all_lines = lines.read_text(encoding="utf-8").splitlines()
    folder = D.image_folder(images)
    files = folder.files
    if len(all_lines) != len(files):
        raise ValueError(f"--texts {str(texts)!r} has {len(all_lines)} lines but --images {str(images)!r} has "
                         f"{len(files)} images; they are paired by position (line i with image i in natural "
                         "file-name order), so the counts must match")
    blank = [i for i, t in enumerate(all_lines) if not t.strip()]
    if blank and not skip_blank:
        raise ValueError(f"{str(texts)!r} line {blank[0] + 1} is blank; every line is one sample (remove it, or "
                         "skip blank lines and their images: --skip-blank, skip_blank=True)")
    del raw
    s = SampleSet(n=len(files), row_id=lambda r: f"{r + 1}:{files[r].name}",
                  content=lambda r: (all_lines[r], FileContent(files[r])),
                  spec={"source": "paired", "texts": _abs(texts), "images": _abs(images), "skip_blank": skip_blank},
                  id_format="line:file", text=lambda r: all_lines[r], image=folder.__getitem__)
    if blank:
        s.keep([r for r in s.rows if all_lines[r].strip()])
        if not s.rows:
            raise ValueError(f"{str(texts)!r} holds no samples")
    return s


def from_colours(template: str = D.COLOUR_TEMPLATE, size: int = 32) -> SampleSet:
    """The built-in colour set: XKCD colour names as texts, plain swatches as images, one row each."""
    names, rgb = D.xkcd_srgb()
    swatches = D.colour_swatches(size)
    return SampleSet(n=len(names), row_id=str, content=lambda r: (names[r], [float(v) for v in rgb[r]]),
                     spec={"source": "colours", "label": "xkcd-colours", "template": template, "size": size},
                     id_format="row", text=lambda r: template.format(names[r]), image=lambda r: swatches[r])


def from_hf_dataset(name_or_path: str | os.PathLike, *, text_column: str | None = None,
                    image_column: str | None = None, caption_index: int | None = None, split: str | None = None,
                    subset: str | None = None, revision: str | None = None, skip_blank: bool = False) -> SampleSet:
    """Rows of a HuggingFace dataset: texts from ``text_column``, images from ``image_column``.

    A text column holding lists of captions (the WIT layout) takes caption ``caption_index``
    (default 0, as the reference's ``--caption_idx``). The fingerprint covers every column of
    each row, so features of the texts and of the images of the same rows record the same one.
    Rows whose text is empty or missing are an error, or dropped with ``skip_blank``.
    """
    import datasets

    source = os.fspath(name_or_path)
    if text_column is None and image_column is None:
        raise ValueError("a dataset needs --text-column and/or --image-column (or --column)")
    ds = D.hf_dataset(source, split=split, subset=subset, revision=revision)
    names = list(ds.column_names)
    for flag, col in (("--text-column", text_column), ("--image-column", image_column)):
        if col is not None and col not in names:
            raise ValueError(f"{flag} {col!r} is not a column of {source!r}; it has {names}")
    local = Path(source).expanduser().exists()
    spec = {"source": "hf-dataset", ("path" if local else "hub_id"): _abs(source) if local else source,
            "revision": revision,
            "subset": subset, "split": split or getattr(ds, "split", None) and str(ds.split), "skip_blank": skip_blank}
    modality_spec: dict = {}
    # Every column, images as their encoded bytes (not decoded): the row's content.
    raw = ds
    for col, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            raw = raw.cast_column(col, datasets.Image(decode=False))

    def content(r: int) -> tuple:
        row = raw[r]
        for col, value in row.items():
            if isinstance(value, dict) and value.get("bytes") is None and value.get("path"):
                p = Path(value["path"])
                if p.is_file():
                    row[col] = dict(value, bytes=FileContent(p))
        return (row,)

    texts = None
    if text_column is not None:
        values = ds[text_column] if hasattr(ds, "__getitem__") else [row[text_column] for row in ds]
        texts = _captions(values, text_column, caption_index, source)
        listed = texts[1]
        modality_spec["language"] = {"text_column": text_column,
                                     "caption_index": 0 if listed and caption_index is None else caption_index}
    elif caption_index is not None:
        raise ValueError("--caption-index needs --text-column (the list-valued text column to index)")
    image = None
    if image_column is not None:
        if not isinstance(ds.features[image_column], datasets.Image):
            raise ValueError(f"--image-column {image_column!r} is not an image column of {source!r} "
                             f"(its type is {ds.features[image_column]!r})")
        images_only = ds.select_columns([image_column])

        def image(r: int):
            return images_only[r][image_column]

        modality_spec["vision"] = {"image_column": image_column}
    s = SampleSet(n=len(ds), row_id=str, content=content, spec=spec, id_format="row",
                  text=(lambda r: texts[0][r]) if texts is not None else None, image=image,
                  modality_spec=modality_spec)
    # The reference's default; the CLI says so when it applies.
    s.caption_default = texts is not None and texts[1] and caption_index is None
    if texts is not None:
        blank = [r for r, t in enumerate(texts[0]) if t is None or not t.strip()]
        if blank and not skip_blank:
            raise ValueError(f"row {blank[0]} of {source!r} has an empty or missing text in {text_column!r} "
                             f"({len(blank)} such rows); drop those rows with --skip-blank (skip_blank=True)")
        if blank:
            gone = set(blank)
            s.keep([r for r in s.rows if r not in gone])
            if not s.rows:
                raise ValueError(f"{source!r} holds no non-empty texts in {text_column!r}")
    return s


def _captions(values: list, column: str, caption_index: int | None, source: str) -> tuple[list, bool]:
    """(one text or None per row, whether the column holds lists)."""
    if caption_index is not None and (isinstance(caption_index, bool) or not isinstance(caption_index, int)
                                      or caption_index < 0):
        raise ValueError(f"--caption-index must be an int >= 0, got {caption_index!r}")
    listed = any(isinstance(v, (list, tuple)) for v in values)
    if not listed and caption_index is not None:
        raise ValueError(f"--caption-index applies to a text column holding lists of captions; {column!r} of "
                         f"{source!r} holds single texts (drop --caption-index)")
    k = caption_index or 0
    out = []
    for r, v in enumerate(values):
        if isinstance(v, (list, tuple)):
            if k >= len(v):
                if not v:
                    out.append(None)
                    continue
                raise ValueError(f"row {r} of {source!r} has {len(v)} caption(s) in {column!r}; --caption-index "
                                 f"{k} is out of range (choose 0..{min(len(x) for x in values if x) - 1} or "
                                 "filter the dataset)")
            v = v[k]
        if v is not None and not isinstance(v, str):
            raise ValueError(f"row {r} of {source!r}: {column!r} holds {type(v).__name__}, not text; choose a "
                             "text column with --text-column")
        out.append(v)
    return out, listed


def load_samples(*, texts: str | None = None, images: str | None = None, hf_dataset: str | None = None,
                 column: str | None = None, text_column: str | None = None, image_column: str | None = None,
                 caption_index: int | None = None, split: str | None = None, subset: str | None = None,
                 revision: str | None = None, colours: bool = False, limit: int | None = None,
                 skip_blank: bool = False) -> SampleSet:
    """The sample set the ``extract`` command's data options name (see the ``from_*`` functions).

    ``texts`` and ``images`` together pair line i with image i; ``hf_dataset`` takes
    ``text_column`` and/or ``image_column`` (``column``: either, by its type); ``limit`` keeps
    the first rows (after blank ones are dropped).
    """
    chosen = [k for k, v in (("texts", texts), ("images", images), ("hf_dataset", hf_dataset), ("colours", colours))
              if v]
    if not chosen:
        raise ValueError("no data given: pass --texts FILE, --images DIR (or both, paired), --hf-dataset, or --colours")
    if hf_dataset and (texts or images or colours) or colours and (texts or images):
        raise ValueError(f"give one data source, got {' and '.join('--' + c.replace('_', '-') for c in chosen)} "
                         "(only --texts and --images go together: they are paired line by line)")
    if not hf_dataset:
        for flag, v in (("--column", column), ("--text-column", text_column), ("--image-column", image_column),
                        ("--caption-index", caption_index), ("--split", split), ("--subset", subset),
                        ("--revision", revision)):
            if v is not None:
                raise ValueError(f"{flag} applies to --hf-dataset only")
    if texts and images:
        s = from_paired_files(texts, images, skip_blank=skip_blank)
    elif texts:
        s = from_text_file(texts, skip_blank=skip_blank)
    elif images:
        s = from_image_folder(images)
    elif colours:
        s = from_colours()
    else:
        if column is not None:
            if text_column is not None or image_column is not None:
                raise ValueError("give --column or --text-column/--image-column, not both")
            text_column, image_column = _column_kind(hf_dataset, column, split, subset, revision)
        s = from_hf_dataset(hf_dataset, text_column=text_column, image_column=image_column,
                            caption_index=caption_index, split=split, subset=subset, revision=revision,
                            skip_blank=skip_blank)
    return s.limit(limit)


def _column_kind(source, column, split, subset, revision) -> tuple[str | None, str | None]:
    import datasets

    ds = D.hf_dataset(source, split=split, subset=subset, revision=revision)
    if column not in ds.column_names:
        raise ValueError(f"--column {column!r} is not a column of {str(source)!r}; it has {list(ds.column_names)}")
    return (None, column) if isinstance(ds.features[column], datasets.Image) else (column, None)
