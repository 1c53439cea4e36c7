"""Layer-wise features of HuggingFace transformers language models.

Every hidden state the model returns (the embedding output included, as the reference does) is
pooled over each sample's valid tokens (``pool="avg"``) or taken at its last valid token
(``pool="last"``). Causal LMs also give per-sample bits-per-byte: the sum of the next-token
negative log-likelihoods (nats) over the sample's tokens, / ln 2, / its UTF-8 byte count.

Batch invariance: samples are padded on the right with an attention mask, and position ids
(where the model takes them) count real tokens only. A causal model never lets a real token
attend to a later pad, and an encoder masks pads out, so a sample's features do not depend on
its batch companions. (The reference pads causal LMs on the left without shifting positions,
which moves the features of absolute-position models such as GPT-2 with the batch.) Samples are
processed longest first to keep padding small, and returned in the input order.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import _common as C
from .provenance import content_provenance, describe_spec, provenance_of
from .storage import Features

POOLS = ("avg", "last")
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, (str, bytes)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"texts must be a sequence of strings, got {type(texts).__name__}")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty; pass at least one string")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
        if not t:
            raise ValueError(f"texts[{i}] is an empty string; every sample needs at least one token")
    return texts


def _load(source: str, tokenizer, dtype: torch.dtype, opts: C.LoadOptions):
    """Load model (and tokenizer) by hub id or local path; causal LMs with their LM head."""
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - transformers is a declared extra
        raise ImportError("features.language needs transformers: pip install 'platonic_fast[features]'") from e
    if C.check_local_path(source):  # a missing local folder fails here, not as a hub look-up
        C.check_kind(source, "language")
    common: dict[str, Any] = {"local_files_only": True} if C.hub_offline() else {}
    if opts.revision is not None:
        common["revision"] = opts.revision
    if opts.trust_remote_code:
        common["trust_remote_code"] = True
    with C.hub_loading(source, "transformers"):
        config = transformers.AutoConfig.from_pretrained(source, **common)
        archs = getattr(config, "architectures", None) or []
        causal = any(a.endswith(_CAUSAL_SUFFIXES) for a in archs)
        cls = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
        if opts.random_init:
            # Same architecture, fresh weights from the model's own initialisation, seeded; the
            # caller's global RNG state is left as it was.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(opts.seed)
                model = cls.from_config(config, dtype=dtype, trust_remote_code=opts.trust_remote_code)
        else:
            load: dict[str, Any] = dict(common, config=config, dtype=dtype)
            if opts.device_map is not None:
                load["device_map"] = opts.device_map
            if opts.load_in is not None:
                load["quantization_config"] = C.quantization_config(opts.load_in, dtype)
            model = cls.from_pretrained(source, **load)
        if tokenizer is None:
            tokenizer = transformers.AutoTokenizer.from_pretrained(source, **common)
    return model, tokenizer


def _is_causal(model) -> bool:
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"model is an encoder-decoder ({type(model).__name__}); pass its encoder "
            "(model.get_encoder()) or a decoder-only / encoder-only model"
        )
    can_generate = getattr(model, "can_generate", None)
    return bool(can_generate()) if callable(can_generate) else False


def _max_length(model, tokenizer, max_length: int | None) -> int | None:
    if max_length is not None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
        return max_length
    limits = []
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions"):
        v = getattr(config, attr, None)
        if isinstance(v, int) and v > 0:
            limits.append(v)
    v = getattr(tokenizer, "model_max_length", None)
    if isinstance(v, int) and 0 < v < 10**7:  # tokenizers without a limit report ~1e30
        limits.append(v)
    return min(limits) if limits else None


def _tokenize(tokenizer, texts: list[str], max_length: int | None) -> list[list[int]]:
    if tokenizer is None or not callable(tokenizer):
        raise TypeError("tokenizer must be a HuggingFace tokenizer (callable on a list of strings)")
    ids: list[list[int]] = []
    step = 1024  # tokenise in chunks: fast tokenizers parallelise within a call
    for start in range(0, len(texts), step):
        enc = tokenizer(texts[start:start + step], add_special_tokens=True)["input_ids"]
        ids.extend([int(t) for t in e] for e in enc)
    long = [i for i, e in enumerate(ids) if max_length and len(e) > max_length]
    if long:
        # Only the long ones are re-tokenised: the tokenizer's own truncation keeps the closing
        # special tokens that cutting the list by hand would drop.
        enc = tokenizer([texts[i] for i in long], add_special_tokens=True, truncation=True, max_length=max_length)
        for i, e in zip(long, enc["input_ids"]):
            ids[i] = [int(t) for t in e]
        warnings.warn(f"{len(long)} text(s) were truncated to max_length={max_length} tokens; their "
                      "bits-per-byte still divide by the whole text's bytes", stacklevel=4)
    for i, e in enumerate(ids):
        if not e:
            raise ValueError(f"texts[{i}] tokenises to no tokens")
    return ids


def _forward_kwargs(model) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return set()


# no_grad, not inference_mode: the returned tensors must stay ordinary (writable, usable in autograd).
@torch.no_grad()
def _run(model, ids: list[list[int]], texts: list[str], pool: str, batch_size: int, device: torch.device,
         causal: bool, pad_id: int, progress: bool, desc: str):
    n = len(ids)
    accepted = _forward_kwargs(model)
    extra = {}
    if "use_cache" in accepted:
        extra["use_cache"] = False  # no KV cache: we never generate
    buffer = C.LayerBuffer(n)
    bpb = torch.full((n,), float("nan"), dtype=torch.float64) if causal else None
    no_prediction = 0
    order = sorted(range(n), key=lambda i: -len(ids[i]))  # longest first: an OOM shows up at once
    bar = tqdm(total=n, desc=desc, unit="sample", disable=not progress)
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        lengths = torch.tensor([len(ids[i]) for i in rows])
        width = int(lengths.max())
        input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        for r, i in enumerate(rows):
            input_ids[r, :len(ids[i])] = torch.tensor(ids[i])
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        kwargs = dict(input_ids=input_ids.to(device), attention_mask=mask.to(device), output_hidden_states=True,
                      return_dict=True, **extra)
        if "position_ids" in accepted:
            # Positions count real tokens only; with right padding this is 0..len-1 for every sample.
            kwargs["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0).to(device)
        out = model(**kwargs)
        hidden = out.hidden_states
        if hidden is None:
            raise ValueError(f"{type(model).__name__} returned no hidden_states; it cannot be used for features")
        m = mask.to(device)
        # (A model placed across devices by device_map returns each layer on its own device.)
        if pool == "avg":
            w = m.unsqueeze(-1).float()
            denom = lengths.to(device).float().unsqueeze(-1)
            pooled = [(h.float() * w.to(h.device)).sum(dim=1) / denom.to(h.device) for h in hidden]
        else:
            last = lengths - 1
            ar = torch.arange(len(rows))
            pooled = [h[ar.to(h.device), last.to(h.device)].float() for h in hidden]
        buffer.write(torch.tensor(rows), pooled)
        if causal:
            logits = getattr(out, "logits", None)
            if logits is None:
                raise ValueError(f"{type(model).__name__} returned no logits; load it with its LM head "
                                 "(AutoModelForCausalLM) to get bits-per-byte")
            targets = input_ids.to(logits.device)
            nlls, scored = [], []
            for r, i in enumerate(rows):
                L = len(ids[i])
                if L < 2:
                    no_prediction += 1
                    continue
                # Per sample, in float32: the (L-1) x vocab slice is small; the batch's may not be.
                nlls.append(F.cross_entropy(logits[r, :L - 1].float(), targets[r, 1:L], reduction="sum"))
                scored.append(i)
            for i, nll in zip(scored, torch.stack(nlls).tolist() if nlls else []):  # one device sync per batch
                bpb[i] = nll / math.log(2) / len(texts[i].encode("utf-8"))
        del out, hidden, pooled
        bar.update(len(rows))
    bar.close()
    if no_prediction:
        warnings.warn(f"{no_prediction} sample(s) have a single token: nothing to predict, bits-per-byte is NaN",
                      stacklevel=3)
    return buffer.result(), (bpb.float() if bpb is not None else None)


def language(model, texts: Sequence[str], tokenizer=None, pool: str = "avg", batch_size: int = 8, device=None,
             dtype=None, *, max_length: int | None = None, dataset: str | None = None,
             progress: bool = True, revision: str | None = None, trust_remote_code: bool = False,
             device_map=None, load_in: str | None = None, random_init: bool = False, seed: int = 0) -> Features:
    """Pooled hidden states of every layer of a transformers language model, and bits-per-byte.

    Parameters
    ----------
    model : str, os.PathLike or transformers.PreTrainedModel
        A hub id (``"bigscience/bloomz-560m"``) or local folder, loaded once with
        ``AutoModelForCausalLM`` when its config names a causal-LM architecture, else
        ``AutoModel``, and freed afterwards; or an already-built model (then ``tokenizer`` is
        required, and the model is returned to its device, dtype and train/eval mode afterwards).
    texts : sequence of str, length N
        Non-empty samples.
    tokenizer : transformers tokenizer, optional
        Required with a built model; loaded from ``model`` otherwise. It needs no pad token
        (padding is done here, on the right).
    pool : {"avg", "last"}, default "avg"
        Mean over the sample's valid tokens (padding excluded), or its last valid token.
    batch_size : int, default 8
    device : str or torch.device, optional
        Default: a built model's device, else CUDA when available, else CPU.
    dtype : torch.dtype or str, optional
        Compute dtype. Default: a built model's dtype, else float32 on CPU and bfloat16 (float16
        without bf16 support) on GPU. Pooling and the log-likelihoods are computed in float32.
    max_length : int, optional
        Truncate samples to this many tokens. Default: the model's position limit (and the
        tokenizer's ``model_max_length``); a warning says how many samples were truncated.
    dataset : str, optional
        Recorded in ``meta["dataset"]`` (default: the label of ``texts``' sample set, if any).
    progress : bool, default True
        Show a tqdm progress bar.
    revision : str, optional
        Hub branch, tag or commit of the model (``from_pretrained(revision=)``).
    trust_remote_code : bool, default False
        Allow the model's own code from the hub (``trust_remote_code=True``): only for models
        you trust.
    device_map : str or dict, optional
        Passed to ``from_pretrained`` (``"auto"``, ``"cpu"``, ``{"": 0}``, ...; needs
        ``accelerate``): the model is placed by transformers and never moved here; inputs go to
        its input embeddings' device. Not together with ``device``.
    load_in : {"8bit", "4bit"}, optional
        Quantized loading through bitsandbytes (``pip install 'platonic_fast[large]'``; its
        kernels need a CUDA GPU). 4-bit is NF4 with ``dtype`` as the compute dtype.
    random_init : bool, default False
        The same architecture with random weights (the model's own initialisation, seeded by
        ``seed``): the untrained-model baseline. Only the config and tokenizer are read.
    seed : int, default 0
        Seed of the random initialisation.

    Returns
    -------
    Features
        ``layers``: float32 N x L x D on CPU, L = number of hidden states (layers + 1).
        ``bpb``: float32 (N,) bits-per-byte for causal LMs, else None.
        ``meta``: model, model_id, modality, pooling, dataset, samples (the sample fingerprint
        and dataset spec, see :mod:`.provenance`), N, num_layers, layer_widths, num_params,
        dtype, causal, max_length, padding, revision, random_init.

    Raises
    ------
    ValueError
        Bad ``pool``/``batch_size``/``max_length``, empty ``texts`` or an empty text, an
        encoder-decoder model, a missing local path.
    TypeError
        ``texts`` is not a sequence of strings; a built model without ``tokenizer``.
    RuntimeError
        A hub id that is not cached locally while no network is reachable.

    Examples
    --------
    >>> f = language("bigscience/bloomz-560m", ["a red apple", "the sky"], pool="avg")   # doctest: +SKIP
    >>> f.layers.shape, f.bpb.shape                                                     # doctest: +SKIP
    (torch.Size([2, 25, 1024]), torch.Size([2]))
    """
    pool = C.check_pool(pool, POOLS)
    batch_size = C.check_batch_size(batch_size)
    opts = C.LoadOptions(revision, bool(trust_remote_code), device_map, load_in, bool(random_init), seed).check(device)
    samples = provenance_of(texts)
    texts = _check_texts(texts)
    if samples is None:
        samples = content_provenance(texts, {"source": "in-memory", "label": dataset} if dataset else None)
    if dataset is None:
        dataset = samples["spec"].get("label") or describe_spec(samples["spec"])
    source = C.model_source(model)
    if source is None:
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
            raise TypeError(f"model must be a hub id, a local path or a transformers model, got {type(model).__name__}")
        if tokenizer is None:
            raise TypeError("tokenizer is required when model is an already-built transformers model")
        if opts != C.LoadOptions():
            raise ValueError("revision, trust_remote_code, device_map, load_in and random_init apply to models "
                             "loaded here (a hub id or a local path), not to an already-built model")
        dev = C.resolve_device(device, model)
        dt = C.resolve_dtype(dtype, dev, model)
        name = getattr(model.config, "_name_or_path", "") or type(model).__name__
        return _extract(model, tokenizer, texts, pool, batch_size, dev, dt, max_length, progress,
                        meta={"model": name, "model_id": name, "dataset": dataset, "samples": samples},
                        restore=True)
    dev = C.resolve_device(device)
    dt = C.resolve_dtype(dtype, dev)
    loaded, tokenizer = _load(source, tokenizer, dt, opts)
    if opts.placed:
        dev = C.input_device(loaded)
    meta = {"model": source, "model_id": C.model_identity(source), "dataset": dataset, "samples": samples,
            "revision": opts.revision, "random_init": opts.random_init}
    if opts.random_init:
        meta["seed"] = opts.seed
    if opts.device_map is not None:
        meta["device_map"] = opts.device_map if isinstance(opts.device_map, str) else "custom"
    if opts.load_in is not None:
        meta["load_in"] = opts.load_in
    try:
        return _extract(loaded, tokenizer, texts, pool, batch_size, dev, dt, max_length, progress, meta=meta,
                        restore=False, placed=opts.placed)
    finally:
        del loaded  # the only reference: the model goes with it
        C.release_memory()


def _extract(model, tokenizer, texts, pool, batch_size, device, dtype, max_length, progress, meta, restore,
             placed=False):
    causal = _is_causal(model)
    max_length = _max_length(model, tokenizer, max_length)
    ids = _tokenize(tokenizer, texts, max_length)
    pad_id = next((v for v in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None))
                   if isinstance(v, int)), 0)  # any valid id: padded positions are masked out
    # A model placed by device_map / quantization stays exactly where transformers put it.
    work_ctx = contextlib.nullcontext(model.eval()) if placed else C.borrowed(model, device, dtype, restore=restore)
    with work_ctx as work:
        layers, bpb = _run(work, ids, texts, pool, batch_size, device, causal, pad_id, progress,
                           desc=f"features {meta['model']}")
    meta = {
        "model": str(meta["model"]), "modality": "language", "model_class": type(model).__name__, "pooling": pool,
        **{k: v for k, v in meta.items() if k != "model"},
        "num_params": C.count_parameters(model), "dtype": str(dtype).removeprefix("torch."),
        "causal": causal, "max_length": max_length, "padding": "right",
    }
    return Features(layers, bpb, meta)
