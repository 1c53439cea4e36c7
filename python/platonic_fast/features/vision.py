"""Layer-wise features of timm vision models.

Models with a ``blocks`` sequence (ViT, DeiT, EVA, BEiT, ... the reference's models) are read
with forward hooks on every block: the block's output token sequence, which is what the
reference's ``blocks.{i}.add_1`` feature-extractor nodes return. ``pool="cls"`` takes the class
token, ``pool="mean"`` the mean of the patch tokens (class and register tokens excluded, as
timm's own ``global_pool="avg"``). Only ``forward_features`` runs: the head is skipped.

CNNs (ResNet, EfficientNet, ConvNeXt, ...) have no class token: ``pool="mean"`` takes the spatial
mean of every stage's feature map. EfficientNet/MobileNet keep their stages in ``blocks`` (hooked
like a ViT's, pooled over height and width); the others give every stage through timm's
``forward_intermediates``. Whether a model has a class token is read from its architecture built
on the meta device (no weights, no memory) before anything loads, so a wrong ``pool`` fails at once.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import _common as C
from .provenance import content_provenance, describe_spec, provenance_of
from .storage import Features

POOLS = ("cls", "mean")


def _to_pil(image: Any, i: int):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"images[{i}] must be a uint8 array (H x W x 3, values 0..255), got dtype {image.dtype}")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            raise ValueError(f"images[{i}] must be H x W x 3 (or H x W grey), got shape {image.shape}")
        return Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    raise TypeError(f"images[{i}] must be a PIL image or a uint8 H x W x 3 array, got {type(image).__name__}")


def default_transform(model):
    """timm's evaluation transform for ``model`` (resize, centre crop, normalise).

    The input size is taken from the model itself when it was built for another size than its
    pretrained config says (e.g. ``img_size=32``): the config would resize to the wrong size.
    """
    import timm.data

    config = timm.data.resolve_model_data_config(model)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is not None and tuple(config["input_size"][1:]) != tuple(size):
        config["input_size"] = (config["input_size"][0], *size)
        config["crop_pct"] = 1.0
    return timm.data.create_transform(**config, is_training=False)


def timm_name(source: str, revision: str | None = None) -> str:
    """The name timm.create_model gets for ``source``: ``local-dir:`` for a folder, ``hf-hub:`` for a
    hub id ``org/name`` (with ``@revision``), else the timm registry name, checked.

    Raises
    ------
    FileNotFoundError
        ``source`` is spelled like a local path that does not exist.
    ValueError
        A local folder of a transformers model; an unknown timm name (the message offers the
        closest known names); ``revision`` for a registry name.
    """
    import timm

    if C.check_local_path(source):
        C.check_kind(source, "vision")
        if revision is not None:
            raise ValueError(f"revision applies to hub models; {source!r} is a local folder (drop --revision)")
        return f"local-dir:{source}"
    name = source
    if name.startswith("timm/") or ("/" in name and ":" not in name):
        name = f"hf-hub:{name}"
    if name.startswith(("hf-hub:", "hf_hub:")):
        return f"{name}@{revision}" if revision is not None and "@" not in name else name
    if revision is not None:
        raise ValueError(f"revision applies to timm hub ids ('hf-hub:org/name' or 'org/name'); {source!r} is a timm "
                         "registry name, whose pretrained tag (e.g. '.augreg_in21k') already fixes the weights")
    if not timm.is_model(name):
        from .model_sets import known_names

        pool = sorted(set(timm.list_models()) | set(timm.list_pretrained()) | set(known_names()))
        raise ValueError(f"{source!r} is not a timm model name" + (C.suggestion(source, pool) or
                         " (timm.list_models() lists them; a hub model is 'hf-hub:org/name')"))
    return name


def _load(source: str, dtype: torch.dtype, opts: C.LoadOptions):
    try:
        import timm
    except ImportError as e:  # pragma: no cover - timm is a declared extra
        raise ImportError("features.vision needs timm: pip install 'platonic_fast[features]'") from e
    name = timm_name(source, opts.revision)
    with C.hub_loading(source, "timm"):
        if opts.random_init:
            # Same architecture, timm's own initialisation, seeded; the global RNG is left as it was.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(opts.seed)
                model = timm.create_model(name, pretrained=False)
        else:
            model = timm.create_model(name, pretrained=True)
    return model.to(dtype=dtype)


class _BlockHooks:
    """Forward hooks pooling each block's output as soon as it is produced (no B x T x D kept)."""

    def __init__(self, blocks, pool: str, prefix: int, channels_last: bool = False):
        self.pool, self.prefix, self.channels_last = pool, prefix, channels_last
        self.outputs: list[torch.Tensor | None] = [None] * len(blocks)
        self.handles = [b.register_forward_hook(self._hook(i)) for i, b in enumerate(blocks)]

    def _hook(self, i: int):
        def hook(module, args, output):
            x = output[0] if isinstance(output, (tuple, list)) else output
            if x.dim() == 4 and self.pool == "mean":  # a CNN stage's feature map: spatial mean
                self.outputs[i] = x.float().mean(dim=(1, 2) if self.channels_last else (2, 3))
                return
            if x.dim() != 3:
                raise ValueError(f"block {i} returned shape {tuple(x.shape)}; expected batch x tokens x width "
                                 "(or a batch x channels x height x width feature map, with pool='mean')")
            self.outputs[i] = x[:, 0].float() if self.pool == "cls" else x[:, self.prefix:].float().mean(dim=1)
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def _pool_intermediate(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 4:  # NCHW
        return x.float().mean(dim=(2, 3))
    if x.dim() == 3:  # NLC
        return x.float().mean(dim=1)
    raise ValueError(f"an intermediate output has shape {tuple(x.shape)}; expected NCHW or NLC")


# no_grad, not inference_mode: the returned tensors must stay ordinary (writable, usable in autograd).
@torch.no_grad()
def _run(model, images, transform, pool, batch_size, device, dtype, progress, desc):
    n = len(images)
    hooks = None
    check_model_pool(model, pool)
    if _has_blocks(model):
        hooks = _BlockHooks(model.blocks, pool, _prefix_tokens(model),
                            channels_last=getattr(model, "output_fmt", "NCHW") == "NHWC")
    buffer = C.LayerBuffer(n)
    bar = tqdm(total=n, desc=desc, unit="image", disable=not progress)
    try:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            batch = []
            for i in range(start, stop):
                x = transform(_to_pil(images[i], i))
                if not isinstance(x, torch.Tensor) or x.dim() != 3:
                    raise ValueError(f"transform must return a C x H x W tensor, got "
                                     f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
                batch.append(x)
            x = torch.stack(batch).to(device=device, dtype=dtype)
            if hooks is not None:
                model.forward_features(x)
                pooled = list(hooks.outputs)
                hooks.outputs = [None] * len(pooled)
            else:
                pooled = [_pool_intermediate(t) for t in model.forward_intermediates(x, intermediates_only=True)]
            buffer.write(slice(start, stop), pooled)
            bar.update(stop - start)
    finally:
        bar.close()
        if hooks is not None:
            hooks.remove()
    return buffer.result()


def vision(model, images: Sequence[Any], transform=None, pool: str = "cls", batch_size: int = 32, device=None,
           dtype=None, *, dataset: str | None = None, progress: bool = True, revision: str | None = None,
           random_init: bool = False, seed: int = 0) -> Features:
    """Pooled outputs of every block of a timm vision model.

    Parameters
    ----------
    model : str, os.PathLike or timm model
        A timm model name / ``hf-hub:`` id (created with ``pretrained=True``, loaded once and
        freed afterwards), a local folder (timm's ``local-dir:``), or an already-built timm
        model (returned to its device, dtype and train/eval mode afterwards).
    images : sequence of PIL images or uint8 arrays (H x W x 3), length N
        Any indexable sequence (a list, an :class:`~platonic_fast.features.datasets.ImageFolder`,
        a dataset column); images are read one batch at a time.
    transform : callable, optional
        PIL image -> C x H x W tensor. Default: timm's evaluation transform for the model
        (``resolve_model_data_config`` + ``create_transform``).
    pool : {"cls", "mean"}, default "cls"
        The class token, or the mean of the patch tokens, of every block's output. CNNs have no
        class token: ``"mean"`` is the spatial mean of every stage's feature map (``"cls"`` on a
        CNN named by a string fails before its weights load).
    batch_size : int, default 32
    device : str or torch.device, optional
        Default: a built model's device, else CUDA when available, else CPU.
    dtype : torch.dtype or str, optional
        Default: a built model's dtype, else float32 on CPU and bfloat16/float16 on GPU.
        Pooling is done in float32.
    dataset : str, optional
        Recorded in ``meta["dataset"]`` (default: the label of ``images``' sample set, if any).
    progress : bool, default True
        Show a tqdm progress bar.
    revision : str, optional
        Hub branch, tag or commit, for hub ids (``hf-hub:org/name`` or ``org/name``).
    random_init : bool, default False
        The same architecture with timm's random initialisation (seeded by ``seed``), no
        weights loaded: the untrained-model baseline.
    seed : int, default 0

    Returns
    -------
    Features
        ``layers``: float32 N x L x D on CPU (L = number of blocks), or a list of N x D_l for
        models whose stages differ in width. ``bpb`` is None.

    Raises
    ------
    ValueError
        Bad ``pool``/``batch_size``, empty ``images``, ``pool="cls"`` on a model without a
        class token, an image of the wrong shape, a missing local path.
    TypeError
        An image that is neither PIL nor a uint8 array; ``model`` of another kind.
    RuntimeError
        A hub model that is not cached locally while no network is reachable.

    Examples
    --------
    >>> f = vision("vit_base_patch16_224.augreg_in21k", images, pool="cls")   # doctest: +SKIP
    >>> f.layers.shape                                                          # doctest: +SKIP
    torch.Size([1024, 12, 768])
    """
    pool = C.check_pool(pool, POOLS)
    batch_size = C.check_batch_size(batch_size)
    if isinstance(images, (str, bytes)) or not hasattr(images, "__len__") or not hasattr(images, "__getitem__"):
        raise TypeError(f"images must be an indexable sequence of images, got {type(images).__name__}")
    if len(images) == 0:
        raise ValueError("images is empty; pass at least one image")
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be callable (PIL image -> tensor), got {type(transform).__name__}")
    opts = C.LoadOptions(revision=revision, random_init=bool(random_init), seed=seed).check()
    samples = provenance_of(images)
    if samples is None:
        samples = content_provenance((_to_pil(images[i], i) for i in range(len(images))),
                                     {"source": "in-memory", "label": dataset} if dataset else None)
    if dataset is None:
        dataset = samples["spec"].get("label") or describe_spec(samples["spec"])
    source = C.model_source(model)
    if source is None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a timm model name, a local path or a timm model, "
                            f"got {type(model).__name__}")
        if opts != C.LoadOptions():
            raise ValueError("revision and random_init apply to models loaded here (a timm name, hub id or local "
                             "path), not to an already-built model")
        dev = C.resolve_device(device, model)
        dt = C.resolve_dtype(dtype, dev, model)
        name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
        return _extract(model, images, transform, pool, batch_size, dev, dt, progress,
                        {"model": name, "model_id": name, "dataset": dataset, "samples": samples}, restore=True)
    check_source_pool(source, pool, opts.revision)  # a wrong pool fails here, before any weights load
    dev = C.resolve_device(device)
    dt = C.resolve_dtype(dtype, dev)
    loaded = _load(source, dt, opts)
    meta = {"model": source, "model_id": C.model_identity(source), "dataset": dataset, "samples": samples,
            "revision": opts.revision, "random_init": opts.random_init}
    if opts.random_init:
        meta["seed"] = opts.seed
    try:
        return _extract(loaded, images, transform, pool, batch_size, dev, dt, progress, meta, restore=False)
    finally:
        del loaded  # the only reference: the model goes with it
        C.release_memory()


def _prefix_tokens(model) -> int:
    return int(getattr(model, "num_prefix_tokens", 1 if getattr(model, "cls_token", None) is not None else 0))


def model_pools(model) -> tuple[str, ...]:
    """The pools ``model``'s architecture admits: ("cls", "mean") with a class token, else ("mean",)."""
    if not _has_blocks(model) and not hasattr(model, "forward_intermediates"):
        raise ValueError(f"{type(model).__name__} has neither 'blocks' nor 'forward_intermediates'; "
                         "only timm models are supported")
    has_cls = _has_blocks(model) and getattr(model, "cls_token", None) is not None and _prefix_tokens(model) > 0
    return ("cls", "mean") if has_cls else ("mean",)


def check_model_pool(model, pool: str, label: str | None = None) -> None:
    C.check_pool(pool, POOLS)
    if pool not in model_pools(model):
        raise ValueError(f"pool='cls' needs a class token; {label or type(model).__name__} has none (a CNN, or a "
                         "model without one): use pool='mean' (--pool mean), the mean over patch tokens or, for a "
                         "CNN, the spatial mean of every stage's feature map")


def _skeleton(source: str, revision: str | None):
    """The architecture named ``source`` built on the meta device (no weights read, no memory taken),
    or None when it cannot be built that way (then the pool is checked once the model has loaded)."""
    import timm

    name = timm_name(source, revision)
    try:
        with C.hub_loading(source, "timm"), torch.device("meta"):
            return timm.create_model(name, pretrained=False)
    except (RuntimeError, NotImplementedError, TypeError, AttributeError, OSError):
        return None


def check_source_pool(source: str, pool: str, revision: str | None = None) -> None:
    """Refuse a pool the named model's architecture does not admit, before any weights load."""
    skeleton = _skeleton(source, revision)
    if skeleton is not None:
        check_model_pool(skeleton, pool, repr(source))


def default_pool(source: str, revision: str | None = None) -> str:
    """"cls" for a model with a class token (or one whose architecture cannot be read before
    loading), "mean" for a CNN: what ``extract`` uses without ``--pool``."""
    skeleton = _skeleton(source, revision)
    return "cls" if skeleton is None or "cls" in model_pools(skeleton) else "mean"


def _has_blocks(model) -> bool:
    blocks = getattr(model, "blocks", None)
    return isinstance(blocks, (torch.nn.Sequential, torch.nn.ModuleList)) and len(blocks) > 0


def _extract(model, images, transform, pool, batch_size, device, dtype, progress, meta, restore):
    if transform is None:
        transform = default_transform(model)
    with C.borrowed(model, device, dtype, restore=restore) as work:
        layers = _run(work, images, transform, pool, batch_size, device, dtype, progress,
                      f"features {meta['model']}")
    meta = {
        "model": str(meta["model"]), "modality": "vision", "model_class": type(model).__name__, "pooling": pool,
        **{k: v for k, v in meta.items() if k != "model"},
        "num_params": C.count_parameters(model), "dtype": str(dtype).removeprefix("torch."),
        "layer_source": "blocks (forward hooks)" if _has_blocks(model) else "forward_intermediates",
    }
    return Features(layers, None, meta)
