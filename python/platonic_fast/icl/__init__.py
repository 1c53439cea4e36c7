"""In-context learning from pretraining mixtures, and whether the learners converge.

A rebuild of "Pretraining Data Mixtures Enable Narrow Model Selection Capabilities in Transformer
Models" (Yadlowsky, Doshi, Tripuraneni, arXiv 2311.00871), connected to what platonic_fast
measures: transformers pretrained on sequences (x₁, f(x₁), x₂, f(x₂), …) with f drawn per
sequence from a mixture of function classes, evaluated against classical estimators, and their
hidden states aligned with one another (``pf.align``).

Modules
    :mod:`.tasks`     function classes, mixtures, spec strings ("0.5*dense + 0.5*sparse(k=2)")
    :mod:`.model`     GPT-2 backbone with a linear read-in and read-out (transformers)
    :mod:`.train`     Adam, fresh samples, curriculum, resumable safetensors checkpoints
    :mod:`.evaluate`  NSE curves, bootstrap intervals, baselines (least squares, ridge, Lasso, Bayes, 3-NN, ...)
    :mod:`.presets`   the ``cpu``, ``fair``, ``controls`` and ``paper`` sizes
    :mod:`.study`     the four findings, their controls, the gate, findings over seeds, the alignment bridge
    :mod:`.convergence`  alignment to the true functions with a fixed query, the capability family, Mantel
    :mod:`.gpu`       six models at once on one GPU in ~8 minutes (``scripts/icl_gpu.sh``)

Documentation and the record of what was measured: ``docs/icl.md``.

Needs the ``icl`` extra (transformers, safetensors, scikit-learn, matplotlib); importing
``platonic_fast`` alone never imports this package.
"""

from .model import InContextModel, ModelConfig
from .tasks import FunctionClass, Mixture, parse_class, parse_mixture
from .train import Curriculum, TrainConfig, load_model, train

__all__ = ["Curriculum", "FunctionClass", "InContextModel", "Mixture", "ModelConfig", "TrainConfig", "load_model",
           "parse_class", "parse_mixture", "train"]
