"""The paper's model sets, as named, editable lists with short aliases.

Nothing here loads or downloads anything: a set is a list of names, resolved to models only when
``extract`` (or your code) uses them. Edit the lists in place, or add your own sets:

- in Python: ``model_sets.SETS["mine"] = ["gpt2", "vit_small_patch16_224.augreg_in21k"]`` and
  ``model_sets.ALIASES["small-vit"] = "vit_small_patch16_224.augreg_in21k"``;
- from a JSON file ``{"sets": {"mine": [...]}, "aliases": {"name": "hub id or timm name"}}``
  named by ``--model-sets FILE`` or the ``PLATONIC_FAST_MODEL_SETS`` environment variable (its
  entries are added to, and override, the built-in ones).

The built-in ``val`` set is the reference's (platonic-rep ``tasks.get_models("val")``): 12
language models (BLOOMZ, OpenLLaMA, LLaMA) and 17 vision models (ViT ImageNet-21k, MAE, DINOv2,
CLIP and CLIP fine-tuned on ImageNet-12k). The aliases follow the reference's short names
(``bloom_560m``, ``clip_l``, ``dinov2_g``, ...).

>>> from platonic_fast.features import model_sets
>>> model_sets.resolve("clip_l")                                   # doctest: +SKIP
'vit_large_patch14_clip_224.laion2b'
>>> model_sets.members("val-language")[:2]                         # doctest: +SKIP
['bigscience/bloomz-560m', 'bigscience/bloomz-1b1']
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

ENV_VAR = "PLATONIC_FAST_MODEL_SETS"

LANGUAGE = {
    "bloom_560m": "bigscience/bloomz-560m",
    "bloom_1b1": "bigscience/bloomz-1b1",
    "bloom_1b7": "bigscience/bloomz-1b7",
    "bloom_3b": "bigscience/bloomz-3b",
    "bloom_7b1": "bigscience/bloomz-7b1",
    "open_llama_3b": "openlm-research/open_llama_3b",
    "open_llama_7b": "openlm-research/open_llama_7b",
    "open_llama_13b": "openlm-research/open_llama_13b",
    "llama_7b": "huggyllama/llama-7b",
    "llama_13b": "huggyllama/llama-13b",
    "llama_30b": "huggyllama/llama-30b",
    "llama_65b": "huggyllama/llama-65b",
}

VISION = {
    "vit_t": "vit_tiny_patch16_224.augreg_in21k",
    "vit_s": "vit_small_patch16_224.augreg_in21k",
    "vit_b": "vit_base_patch16_224.augreg_in21k",
    "vit_l": "vit_large_patch16_224.augreg_in21k",
    "mae_b": "vit_base_patch16_224.mae",
    "mae_l": "vit_large_patch16_224.mae",
    "mae_h": "vit_huge_patch14_224.mae",
    "dinov2_s": "vit_small_patch14_dinov2.lvd142m",
    "dinov2_b": "vit_base_patch14_dinov2.lvd142m",
    "dinov2_l": "vit_large_patch14_dinov2.lvd142m",
    "dinov2_g": "vit_giant_patch14_dinov2.lvd142m",
    "clip_b": "vit_base_patch16_clip_224.laion2b",
    "clip_l": "vit_large_patch14_clip_224.laion2b",
    "clip_h": "vit_huge_patch14_clip_224.laion2b",
    "clip_i21k_ft_b": "vit_base_patch16_clip_224.laion2b_ft_in12k",
    "clip_i21k_ft_l": "vit_large_patch14_clip_224.laion2b_ft_in12k",
    "clip_i21k_ft_h": "vit_huge_patch14_clip_224.laion2b_ft_in12k",
}

#: Short name -> hub id or timm name. Edit freely.
ALIASES: dict[str, str] = {**LANGUAGE, **VISION}

#: Set name -> list of model names (aliases, hub ids, timm names or local paths). Edit freely.
SETS: dict[str, list[str]] = {
    "val": [*LANGUAGE.values(), *VISION.values()],
    "val-language": list(LANGUAGE.values()),
    "val-vision": list(VISION.values()),
    "bloomz": [v for k, v in LANGUAGE.items() if k.startswith("bloom")],
    "open-llama": [v for k, v in LANGUAGE.items() if k.startswith("open_llama")],
    "llama": [v for k, v in LANGUAGE.items() if k.startswith("llama")],
    "vit-in21k": [v for k, v in VISION.items() if k.startswith("vit_")],
    "mae": [v for k, v in VISION.items() if k.startswith("mae")],
    "dinov2": [v for k, v in VISION.items() if k.startswith("dinov2")],
    "clip": [v for k, v in VISION.items() if k.startswith("clip_") and "ft" not in k],
    "clip-ft": [v for k, v in VISION.items() if k.startswith("clip_i21k_ft")],
}

#: The modality of every built-in name (vision: timm; language: transformers).
MODALITY: dict[str, str] = {**{v: "language" for v in LANGUAGE.values()}, **{v: "vision" for v in VISION.values()}}


def load_file(path: str | os.PathLike) -> None:
    """Add the sets and aliases of a JSON file (``{"sets": {...}, "aliases": {...}}``) to :data:`SETS`
    and :data:`ALIASES` (its entries override the built-in ones).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not JSON, or not of that shape.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model-set file at {str(path)!r}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"model-set file {str(path)!r} is not JSON: {e}") from e
    sets, aliases = (data.get("sets", {}), data.get("aliases", {})) if isinstance(data, dict) else (None, None)
    if (not isinstance(sets, dict) or not isinstance(aliases, dict)
            or not all(isinstance(v, list) and all(isinstance(m, str) for m in v) for v in sets.values())
            or not all(isinstance(v, str) for v in aliases.values())):
        raise ValueError(f"model-set file {str(path)!r} must hold {{\"sets\": {{name: [model, ...]}}, "
                         "\"aliases\": {short: model}}")
    SETS.update({str(k): list(v) for k, v in sets.items()})
    ALIASES.update({str(k): v for k, v in aliases.items()})


_env_loaded: set[str] = set()


def _load_env() -> None:
    """Apply the file named by PLATONIC_FAST_MODEL_SETS, once per path."""
    path = os.environ.get(ENV_VAR)
    if path and path not in _env_loaded:
        load_file(path)
        _env_loaded.add(path)


def members(name: str) -> list[str]:
    """The models of set ``name`` (hub ids / timm names / paths, aliases resolved).

    Raises
    ------
    KeyError
        No such set; the message names the closest ones.
    """
    _load_env()
    if name not in SETS:
        close = difflib.get_close_matches(name, list(SETS), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else f"; known sets: {', '.join(SETS)}"
        raise KeyError(f"no model set {name!r}{hint}")
    return [resolve(m) for m in SETS[name]]


def resolve(name: str) -> str:
    """An alias's hub id / timm name; any other name unchanged (an existing local path always wins)."""
    if Path(name).expanduser().exists():
        return name
    _load_env()
    return ALIASES.get(name, name)


def modality(name: str) -> str | None:
    """"language" or "vision" for the built-in models, else None (decided when loading)."""
    return MODALITY.get(resolve(name))


def known_names() -> list[str]:
    """Every alias and every model of every set (for "did you mean" suggestions)."""
    _load_env()
    names = set(ALIASES) | set(ALIASES.values())
    for models in SETS.values():
        names.update(models)
    return sorted(names)


def closest(name: str, candidates=None, n: int = 3) -> list[str]:
    """The names closest to ``name`` among ``candidates`` (default: :func:`known_names`)."""
    pool = list(candidates) if candidates is not None else known_names()
    out = difflib.get_close_matches(name, pool, n=n, cutoff=0.6)
    if not out:  # also compare without the org / tag, where most typos are
        short = {c.rsplit("/", 1)[-1].split(".")[0]: c for c in pool}
        out = [short[c] for c in difflib.get_close_matches(name.rsplit("/", 1)[-1].split(".")[0], list(short),
                                                            n=n, cutoff=0.6)]
    return out
