"""Layer-wise feature extraction: transformers language models and timm vision models.

Nothing heavy is imported here: transformers, timm and datasets load on first use, and models
download only when a hub id is named.

>>> from platonic_fast import features
>>> f = features.language("bigscience/bloomz-560m", texts, pool="avg")     # doctest: +SKIP
>>> g = features.vision("vit_base_patch16_224", images, pool="cls")        # doctest: +SKIP
>>> f.layers.shape, f.bpb.shape, f.meta["num_params"]                       # doctest: +SKIP
>>> f.save("feats/bloomz-560m.safetensors")                                # doctest: +SKIP
>>> f = features.load("feats/bloomz-560m.safetensors", mmap=True)          # doctest: +SKIP
>>> features.verify("feats/bloomz-560m.safetensors")                       # doctest: +SKIP
>>> features.sample_fingerprint("feats/bloomz-560m.safetensors")           # doctest: +SKIP
>>> s = features.load_samples(texts="captions.txt", images="photos/")      # doctest: +SKIP
"""

from . import datasets, model_sets
from .language import language
from .provenance import SampleMismatchError, check_same_samples, provenance, sample_fingerprint
from .samples import SampleSet, load_samples
from .storage import Features, load, save, verify
from .vision import default_transform, vision

__all__ = ["Features", "SampleMismatchError", "SampleSet", "check_same_samples", "datasets", "default_transform",
           "language", "load", "load_samples", "model_sets", "provenance", "sample_fingerprint", "save", "verify",
           "vision"]
