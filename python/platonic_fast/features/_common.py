"""Helpers shared by the language and vision extractors: devices, dtypes, hub errors, buffers."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
from pathlib import Path
from typing import Any, Iterator

import torch

from .._checks import DTYPE_NAMES

# The library's dtype table, plus the short names people type on a command line.
_DTYPES = {**DTYPE_NAMES, "fp32": torch.float32, "float": torch.float32, "fp16": torch.float16,
           "half": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64, "double": torch.float64}


def check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def check_pool(pool: Any, allowed: tuple[str, ...]) -> str:
    if pool not in allowed:
        raise ValueError(f"pool must be one of {allowed}, got {pool!r}")
    return pool


def resolve_device(device: Any, model: torch.nn.Module | None = None) -> torch.device:
    """The device to run on: the argument, else a built model's own device, else CUDA if present."""
    if device is None:
        if model is not None:
            p = next(model.parameters(), None)
            if p is not None:
                return p.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be a torch device or a string like 'cpu' or 'cuda:0', got {device!r}") from e


def resolve_dtype(dtype: Any, device: torch.device, model: torch.nn.Module | None = None) -> torch.dtype:
    """The compute dtype: the argument, else a built model's own, else fp32 on CPU and bf16/fp16 on GPU."""
    if dtype is None:
        if model is not None:
            p = next(model.parameters(), None)
            if p is not None and p.is_floating_point():
                return p.dtype
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, str):
        if dtype.removeprefix("torch.") not in _DTYPES:
            raise ValueError(f"dtype must be a floating torch dtype or one of {sorted(_DTYPES)}, got {dtype!r}")
        return _DTYPES[dtype.removeprefix("torch.")]
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch dtype (e.g. torch.bfloat16) or its name, got {dtype!r}")
    return dtype


def model_source(model: Any) -> str | None:
    """The string form of a hub id / local path, or None for an already-built model."""
    if isinstance(model, os.PathLike):
        return os.fspath(model)
    if isinstance(model, str):
        if not model.strip():
            raise ValueError("model must be a hub id, a local path or a built model, got an empty string")
        return model
    return None


def check_local_path(source: str, what: str = "model") -> bool:
    """True when ``source`` names an existing local path; raise at once when it looks like a
    missing one (no hub look-up, which would retry for many seconds before failing).

    Spelled like a path: starts with ``/ ./ ../ ~``, has a backslash or more than one ``/``, or
    is ``dir/name`` where the folder ``dir`` exists here (a hub id is ``name`` or ``org/name``,
    and a local folder named like the org is a typo'd path far more often than a coincidence).
    The message offers the closest names in the nearest existing folder.
    """
    path = Path(source).expanduser()
    if path.exists():
        return True
    looks_local = source.startswith(("/", "./", "../", "~", ".\\")) or source.count("/") > 1 or "\\" in source
    if not looks_local and source.count("/") == 1 and source.split("/")[0] not in ("", ".", ".."):
        looks_local = path.parent.is_dir()
    if looks_local:
        raise FileNotFoundError(f"{what} {source!r} looks like a local path but does not exist"
                                + _closest_in_folder(path))
    return False


def _closest_in_folder(path: Path) -> str:
    """", did you mean ...?" naming the nearest existing folder's closest entries, or where the path breaks."""
    import difflib

    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        path, parent = parent, parent.parent
    if not parent.is_dir():
        return ""
    try:
        names = [p.name for p in parent.iterdir()]
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.6)
    if close:
        return "; did you mean " + " or ".join(repr(str(parent / c)) for c in close) + "?"
    return f" ({str(parent)!r} has no {path.name!r})"


def hub_offline() -> bool:
    """Offline mode as the environment says *now* (huggingface_hub reads it once, at import)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


_OFFLINE_ERRORS = {
    "LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectionError", "ConnectError", "ConnectTimeout",
    "ReadTimeout", "Timeout", "NameResolutionError", "MaxRetryError", "NewConnectionError",
}
_OFFLINE_PHRASES = ("couldn't connect", "outgoing traffic has been disabled", "cannot find the requested files",
                    "offline mode")


def _is_offline_error(err: BaseException) -> bool:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, ConnectionError) or any(c.__name__ in _OFFLINE_ERRORS for c in type(err).__mro__):
            return True
        if any(p in str(err).lower() for p in _OFFLINE_PHRASES):
            return True
        err = err.__cause__ or err.__context__
    return False


_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable() -> bool:
    """True when the hub's host name does not even resolve (no network here): hub look-ups would
    only retry for ~25 s before failing. Unknown (a proxy is set, another error) counts as reachable."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in _PROXY_VARS):
        return False
    try:
        from huggingface_hub import constants

        host = urlparse(constants.ENDPOINT).hostname
    except (ImportError, AttributeError, ValueError):
        return False
    if not host:
        return False
    try:
        socket.getaddrinfo(host, 443)
    except socket.gaierror:
        return True
    except OSError:
        return False
    return False


def offline_patch() -> contextlib.AbstractContextManager:
    """Force huggingface_hub's (and datasets') import-time offline flags on for a ``with`` block."""
    from unittest import mock

    stack = contextlib.ExitStack()
    for module in ("huggingface_hub.constants", "datasets.config"):
        try:
            import importlib

            mod = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(mod, "HF_HUB_OFFLINE"):
            stack.enter_context(mock.patch.object(mod, "HF_HUB_OFFLINE", True))
    return stack


@contextlib.contextmanager
def hub_loading(source: str, library: str) -> Iterator[None]:
    """Turn "not cached and no network" failures into one clear RuntimeError naming the model.

    When the environment asks for offline mode, or the hub's host does not resolve, huggingface_hub's
    import-time offline flag is forced on for the duration: otherwise a download would retry for
    ~25 s before failing.
    """
    offline = hub_offline() or (not Path(source).expanduser().exists() and hub_unreachable())
    patch = offline_patch() if offline else contextlib.nullcontext()
    try:
        with patch:
            yield
    except Exception as e:
        if _is_not_found(e):
            from .model_sets import known_names

            raise RuntimeError(
                f"{library} model {source!r} was not found on the hub (no such repository or revision, "
                "or it is private)"
                + suggestion(source, cached_hub_models() + known_names())
            ) from e
        if _is_offline_error(e):
            from .model_sets import known_names

            # A typo gets the closest names; a correct name that is simply not downloaded, none.
            names = cached_hub_models() + known_names()
            others = [] if source in names else names
            raise RuntimeError(
                f"{library} model {source!r} is not cached locally and no network is reachable "
                f"(or offline mode is on: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r})"
                + (suggestion(source, others) or ".")
                + " Download it once on a machine with network access (it lands in the HuggingFace cache, "
                "HF_HOME), or pass a local folder or an already-built model."
            ) from e
        raise


def _is_not_found(err: BaseException) -> bool:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if any(c.__name__ in ("RepositoryNotFoundError", "RevisionNotFoundError") for c in type(err).__mro__):
            return True
        err = err.__cause__ or err.__context__
    return False


def release_memory() -> None:
    """Give back the memory of a model just dropped (host, and the CUDA caching allocator)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def count_parameters(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _same_device(a: torch.device, b: torch.device) -> bool:
    # "cuda" means the current CUDA device; "cuda:0" and "cuda" usually name the same one.
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


@contextlib.contextmanager
def borrowed(model: torch.nn.Module, device: torch.device, dtype: torch.dtype,
             restore: bool = True) -> Iterator[torch.nn.Module]:
    """Yield ``model`` in eval mode on ``device`` in ``dtype``.

    With ``restore`` (a caller's model) the caller's model is left as it was: a dtype change
    works on a converted copy (casting to bf16 and back would round the caller's weights), a
    device move is undone, the train/eval mode is reset. Without it (a model loaded here and
    about to be dropped) the model is converted in place.
    """
    p = next(model.parameters(), None)
    if p is None:
        raise ValueError(f"{type(model).__name__} has no parameters")
    training, home = model.training, p.device
    same_device = _same_device(home, device)
    if p.dtype != dtype and restore:
        import copy

        work = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
        try:
            yield work
        finally:
            del work
        return
    if not same_device or p.dtype != dtype:
        model.to(device=device, dtype=dtype)
    model.eval()
    try:
        yield model
    finally:
        if restore:
            model.train(training)
            if not same_device:
                model.to(device=home)


class LayerBuffer:
    """Pooled features of every layer, written batch by batch into preallocated float32 memory.

    Widths are learnt from the first batch: equal widths give one N x L x D tensor (no final
    stack, so peak memory stays at one copy), different widths a list of N x D_l tensors.
    """

    def __init__(self, n: int):
        self.n = n
        self.data: torch.Tensor | list[torch.Tensor] | None = None

    def write(self, rows: torch.Tensor | slice, pooled: list[torch.Tensor]) -> None:
        if self.data is None:
            widths = {p.shape[-1] for p in pooled}
            if len(widths) == 1:
                self.data = torch.empty(self.n, len(pooled), widths.pop(), dtype=torch.float32)
            else:
                self.data = [torch.empty(self.n, p.shape[-1], dtype=torch.float32) for p in pooled]
        if isinstance(self.data, torch.Tensor):
            self.data[rows] = torch.stack([p.float().cpu() for p in pooled], dim=1)
        else:
            for buf, p in zip(self.data, pooled):
                buf[rows] = p.float().cpu()

    def result(self) -> torch.Tensor | list[torch.Tensor]:
        if self.data is None:
            raise ValueError("no samples were processed")
        return self.data


def layer_widths(layers: torch.Tensor | list[torch.Tensor]) -> list[int]:
    if isinstance(layers, torch.Tensor):
        return [int(layers.shape[2])] * int(layers.shape[1])
    return [int(t.shape[1]) for t in layers]


# --- loading options, model kinds, suggestions -----------------------------------------------------

LOAD_IN = ("8bit", "4bit")


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """How a model named by hub id or path is loaded (passed through to transformers / timm)."""

    revision: str | None = None
    trust_remote_code: bool = False
    device_map: Any = None
    load_in: str | None = None
    random_init: bool = False
    seed: int = 0

    def check(self, device: Any = None) -> LoadOptions:
        if self.revision is not None and (not isinstance(self.revision, str) or not self.revision.strip()):
            raise ValueError(f"revision must be a branch, tag or commit (a non-empty string), got {self.revision!r}")
        if self.load_in is not None and self.load_in not in LOAD_IN:
            raise ValueError(f"load_in must be one of {LOAD_IN} or None, got {self.load_in!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if self.random_init and (self.device_map is not None or self.load_in is not None):
            raise ValueError("random_init builds the model from its config: it cannot be combined with "
                             "device_map or load_in (those apply to loading pretrained weights)")
        if self.device_map is not None and device is not None:
            raise ValueError("give device or device_map, not both (device_map places the model itself)")
        return self

    @property
    def placed(self) -> bool:
        """The model is placed by transformers/accelerate (device_map, quantization): never moved here."""
        return self.device_map is not None or self.load_in is not None


def local_config(source: str) -> dict | None:
    """The config.json of a local model folder, or None."""
    path = Path(source).expanduser() / "config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) else None


def folder_kind(source: str) -> str | None:
    """"vision" for a timm folder (config.json names an ``architecture``), "language" for a
    transformers one (``model_type``), None when it cannot tell."""
    cfg = local_config(source)
    if cfg is None:
        return None
    if "model_type" in cfg:
        return "language"
    if "architecture" in cfg:
        return "vision"
    return None


def check_kind(source: str, want: str) -> None:
    """Refuse, with the fix, a local model folder of the other kind (timm vs transformers)."""
    kind = folder_kind(source)
    if kind is None or kind == want:
        return
    cfg = local_config(source) or {}
    if kind == "vision":
        raise ValueError(f"model {source!r} is a timm vision model (its config.json names architecture "
                         f"{cfg.get('architecture')!r}): it reads images, not texts; give it images "
                         "(--images, --image-column) or use features.vision")
    raise ValueError(f"model {source!r} is a transformers model (model_type {cfg.get('model_type')!r}), not a "
                     "timm vision model: it reads texts, not images; give it texts (--texts, --text-column) or "
                     "use features.language")


def cached_hub_models() -> list[str]:
    """Model repo ids in the local HuggingFace cache (folder names only: nothing is read)."""
    try:
        from huggingface_hub import constants

        root = Path(constants.HF_HUB_CACHE)
        return sorted(p.name[len("models--"):].replace("--", "/") for p in root.iterdir()
                      if p.name.startswith("models--"))
    except (ImportError, OSError, AttributeError):
        return []


def suggestion(name: str, candidates: list[str]) -> str:
    """"; did you mean 'a' or 'b'?" for the closest candidates, or ""."""
    from .model_sets import closest

    close = closest(name, candidates)
    return f"; did you mean {' or '.join(map(repr, close))}?" if close else ""


def quantization_config(load_in: str, dtype: torch.dtype):
    """transformers' BitsAndBytesConfig for 8-bit or 4-bit (NF4) loading; needs bitsandbytes."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"{load_in} loading needs bitsandbytes (and, for most of its kernels, a CUDA GPU): "
                          "pip install 'platonic_fast[large]'")
    from transformers import BitsAndBytesConfig

    if load_in == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a placed model (device_map) takes its inputs: its input embeddings' device."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    p = next(emb.parameters(), None) if emb is not None else None
    if p is None:
        p = next(model.parameters())
    return p.device


def model_identity(source: str) -> str:
    """The identity recorded for a model: an absolute path for a local folder, else the id itself."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source
