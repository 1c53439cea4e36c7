"""Function classes, mixtures of them, and the sequences they generate.

Every choice the public accounts of the study leave open is written here, once.

Inputs
    x ~ N(0, I_d). Under a dimension curriculum only the first ``d_eff`` coordinates are drawn,
    the others are zero, and every function below lives on those ``d_eff`` coordinates.

Unit output variance
    Each class is scaled so that E[f(x)²] = 1 and E[f(x)] = 0, the expectation taken over the
    function *and* x (a single function's variance scatters around 1, as ‖w‖² does). Errors then
    compare across classes: the zero predictor's expected squared error is 1 for every class.
    No observation noise is added (y = f(x) exactly), as in the study.

``dense``
    f(x) = ⟨w, x⟩ with w ~ N(0, I/d_eff): every coefficient non-zero, Gaussian, so that least
    squares (minimum norm) is the Bayes-optimal predictor for noise-free y.
``sparse(k)``
    f(x) = ⟨w, x⟩ with exactly k non-zero coefficients at k coordinates drawn uniformly without
    replacement, each N(0, 1/k). k is any of 1..d (the study pretrains on k = 2 of d = 20). Under a
    curriculum with d_eff < k, k_eff = d_eff.
``dense(raw=1)``, ``sparse(k, raw=1)`` (unnormalised targets, Garg et al.'s scale)
    w ~ N(0, I_{d_eff}) for dense, the k non-zeros N(0, 1) for sparse: output variance d_eff and k
    instead of 1. Garg et al. (and the mixture study after them) do not normalise, so in their data
    the output scale alone tells a dense function from a sparse one (variance 20 against 2 at
    d = 20, k = 2); the unit-variance default removes that cue. Errors on these tasks are
    normalised by :func:`output_variance` (Garg et al. divide by d).
``sine(lo, hi)``
    f(x) = √2 · sin(ω ⟨u, x⟩ + φ): u uniform on the unit sphere (so ⟨u, x⟩ ~ N(0, 1)), ω ~ U[lo, hi],
    φ ~ U[0, 2π). For any fixed ω, E_φ[sin²] = 1/2 and E_φ[sin] = 0, so the √2 makes the variance
    exactly 1. ``sine(lo=w, hi=w)`` fixes the frequency (the frequency scan).
``combo(alpha, lo, hi)`` (evaluation; trainable for finding 3's control, see ``COMBOS``)
    (α · f_dense + (1 − α) · f_sine(lo, hi)) / √(α² + (1 − α)²), both parts drawn independently: they
    are uncorrelated, so dividing by √(α² + (1 − α)²) restores unit variance. α = 1 is ``dense``,
    α = 0 is ``sine``.
``relu(h)``
    f(x) = √(2/h) · Σ_j a_j · relu(⟨w_j, x⟩) with a_j ~ N(0, 1), w_j ~ N(0, I/d_eff), h hidden units
    (default 100, as Garg et al. 2022): E[relu(g)²] = 1/2 for g ~ N(0, 1), hence unit variance.

Mixtures
    ``Mixture`` holds classes and weights (non-negative, summing to 1). The class is drawn per
    sequence (multinomial with the weights), then a fresh function of that class for the sequence.

Spec strings (the CLI's and the checkpoints' form)
    ``"dense"``, ``"sparse(k=2)"``, ``"sine(lo=0.5,hi=1.5)"``, ``"combo(alpha=0.3)"``, ``"relu(h=100)"``;
    mixtures ``"0.5*dense + 0.5*sparse(k=2)"``. A class without a weight in a mixture of one has
    weight 1.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

# The pretraining frequency range of the sinusoid class (ω in radians per unit of ⟨u, x⟩ ~ N(0, 1)):
# one to three half-periods over the bulk (±2) of the projected inputs, a function that is neither
# close to linear (ω → 0) nor aliased by ~20 samples (large ω).
SINE_LO, SINE_HI = 0.5, 1.5


@dataclass(frozen=True)
class FunctionClass:
    """One function class and its parameters (see the module's docstring for each)."""

    name: str
    params: tuple = field(default_factory=tuple)  # sorted (key, value) pairs

    def param(self, key: str, default=None):
        return dict(self.params).get(key, default)

    @property
    def spec(self) -> str:
        shown = [(k, v) for k, v in self.params if (k, v) not in _HIDDEN_DEFAULTS]
        if not shown:
            return self.name
        return f"{self.name}(" + ",".join(f"{k}={_fmt(v)}" for k, v in shown) + ")"

    def __str__(self) -> str:
        return self.spec

    def output_variance(self, d_eff: int) -> float:
        """E[f(x)²] at ``d_eff`` active coordinates: 1, except for the unnormalised classes."""
        if self.param("raw", 0):
            return float(d_eff) if self.name == "dense" else float(min(self.param("k"), d_eff))
        return 1.0

    def check(self, d: int) -> None:
        """Raise ValueError when the class cannot live in dimension ``d``."""
        if self.name == "sparse":
            k = self.param("k")
            if not 1 <= k <= d:
                raise ValueError(f"{self.spec}: k={k} non-zero coefficients need 1 <= k <= d, and d={d}")

    def draw(self, count: int, d: int, d_eff: int, gen: torch.Generator) -> dict:
        """Parameters of ``count`` fresh functions on the first ``d_eff`` of ``d`` coordinates."""
        scale = math.sqrt(self.output_variance(d_eff))   # 1 for the unit-variance classes
        if self.name == "dense":
            return {"w": _dense_w(count, d, d_eff, gen) * scale}
        if self.name == "sparse":
            return {"w": _sparse_w(count, d, d_eff, min(self.param("k"), d_eff), gen) * scale}
        if self.name == "sine":
            return _sine_params(count, d, d_eff, self.param("lo"), self.param("hi"), gen)
        if self.name == "combo":
            out = {"w": _dense_w(count, d, d_eff, gen)}
            out.update(_sine_params(count, d, d_eff, self.param("lo"), self.param("hi"), gen))
            return out
        if self.name == "relu":
            h = self.param("h")
            w = torch.zeros(count, h, d)
            w[:, :, :d_eff] = torch.randn(count, h, d_eff, generator=gen) / math.sqrt(d_eff)
            return {"W": w, "a": torch.randn(count, h, generator=gen)}
        raise AssertionError(self.name)  # parse() admits only the classes above

    def apply(self, p: dict, xs: torch.Tensor) -> torch.Tensor:
        """f(x) for every point: xs (count, n, d) -> (count, n)."""
        if self.name in ("dense", "sparse"):
            return torch.einsum("bnd,bd->bn", xs, p["w"])
        if self.name == "sine":
            return _sine(p, xs)
        if self.name == "combo":
            a = self.param("alpha")
            lin = torch.einsum("bnd,bd->bn", xs, p["w"])
            return (a * lin + (1 - a) * _sine(p, xs)) / math.sqrt(a * a + (1 - a) ** 2)
        if self.name == "relu":
            hidden = torch.relu(torch.einsum("bnd,bhd->bnh", xs, p["W"]))
            return torch.einsum("bnh,bh->bn", hidden, p["a"]) * math.sqrt(2.0 / self.param("h"))
        raise AssertionError(self.name)


def _fmt(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def _dense_w(count, d, d_eff, gen):
    w = torch.zeros(count, d)
    w[:, :d_eff] = torch.randn(count, d_eff, generator=gen) / math.sqrt(d_eff)
    return w


def _sparse_w(count, d, d_eff, k, gen):
    support = torch.rand(count, d_eff, generator=gen).argsort(dim=1)[:, :k]
    w = torch.zeros(count, d)
    w.scatter_(1, support, torch.randn(count, k, generator=gen) / math.sqrt(k))
    return w


def _sine_params(count, d, d_eff, lo, hi, gen):
    u = torch.zeros(count, d)
    g = torch.randn(count, d_eff, generator=gen)
    u[:, :d_eff] = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
    omega = lo + (hi - lo) * torch.rand(count, generator=gen)
    phase = 2 * math.pi * torch.rand(count, generator=gen)
    return {"u": u, "omega": omega, "phase": phase}


def _sine(p, xs):
    z = torch.einsum("bnd,bd->bn", xs, p["u"])
    return math.sqrt(2.0) * torch.sin(p["omega"][:, None] * z + p["phase"][:, None])


# finding 3's control: a model pretrained on the convex combinations themselves, α = 0, 0.1, …, 1
COMBOS = " + ".join(f"{1 / 11!r}*combo(alpha={round(0.1 * i, 1)!r})" for i in range(11))


# --- parsing ------------------------------------------------------------------------------------

# name -> {parameter: (type, default)}
CLASSES: dict[str, dict[str, tuple]] = {
    "dense": {"raw": (int, 0)},
    "sparse": {"k": (int, None), "raw": (int, 0)},
    "sine": {"lo": (float, SINE_LO), "hi": (float, SINE_HI)},
    "combo": {"alpha": (float, None), "lo": (float, SINE_LO), "hi": (float, SINE_HI)},
    "relu": {"h": (int, 100)},
}
# parameters left out of a spec string at their default (added after specs were in use: old
# checkpoints and evaluation banks, whose seeds hash the spec, keep their spec)
_HIDDEN_DEFAULTS = {("raw", 0)}

_CLASS_RE = re.compile(r"^\s*([A-Za-z_]+)\s*(?:\((.*)\))?\s*$")


def parse_class(text: str | FunctionClass) -> FunctionClass:
    """``"sparse(k=2)"`` -> FunctionClass; unknown names or parameters raise ValueError."""
    if isinstance(text, FunctionClass):
        return text
    m = _CLASS_RE.match(text)
    if not m:
        raise ValueError(f"cannot read the function class {text!r}: write name or name(key=value,...), "
                         f"e.g. sparse(k=2)")
    name, args = m.group(1).lower(), m.group(2)
    if name not in CLASSES:
        raise ValueError(f"unknown function class {name!r} in {text!r}; known: {', '.join(CLASSES)}")
    schema = CLASSES[name]
    given: dict = {}
    for part in filter(None, (s.strip() for s in (args or "").split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in schema:
            known = ", ".join(schema) or "none"
            raise ValueError(f"{text!r}: {name} takes the parameters {known}; got {part!r}")
        typ = schema[key][0]
        try:
            given[key] = typ(float(value)) if typ is int and float(value).is_integer() else typ(value)
        except ValueError:
            raise ValueError(f"{text!r}: {key} must be {typ.__name__}, got {value.strip()!r}") from None
    for key, (_typ, default) in schema.items():
        if key not in given:
            if default is None:
                raise ValueError(f"{text!r}: {name} needs {key}= (e.g. {name}({key}=2))")
            given[key] = default
    _check_values(name, given, text)
    return FunctionClass(name, tuple(sorted(given.items())))


def _check_values(name, p, text):
    if p.get("raw", 0) not in (0, 1):
        raise ValueError(f"{text!r}: raw is 0 (unit output variance) or 1 (Garg et al.'s unnormalised scale)")
    if name == "sparse" and p["k"] < 1:
        raise ValueError(f"{text!r}: k must be at least 1")
    if name in ("sine", "combo") and not 0 <= p["lo"] <= p["hi"]:
        raise ValueError(f"{text!r}: the frequency range needs 0 <= lo <= hi")
    if name == "combo" and not 0 <= p["alpha"] <= 1:
        raise ValueError(f"{text!r}: alpha must lie in [0, 1]")
    if name == "relu" and p["h"] < 1:
        raise ValueError(f"{text!r}: h must be at least 1")


@dataclass(frozen=True)
class Mixture:
    """Function classes with weights; the class is drawn per sequence."""

    classes: tuple[FunctionClass, ...]
    weights: tuple[float, ...]

    def __post_init__(self):
        if not self.classes or len(self.classes) != len(self.weights):
            raise ValueError("a mixture needs one weight per class and at least one class")
        if any(not math.isfinite(w) or w < 0 for w in self.weights):
            raise ValueError(f"mixture weights must be non-negative, got {list(self.weights)}")
        total = sum(self.weights)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"mixture weights must sum to 1, got {list(self.weights)} (sum {total:g})")

    @property
    def spec(self) -> str:
        if len(self.classes) == 1:
            return self.classes[0].spec
        return " + ".join(f"{_fmt(w)}*{c.spec}" for c, w in zip(self.classes, self.weights))

    def __str__(self) -> str:
        return self.spec

    def output_variance(self, d: int) -> float:
        """The mixture's E[f(x)²] at d active coordinates (the weights' average of its classes')."""
        return sum(w * c.output_variance(d) for c, w in zip(self.classes, self.weights))

    def check(self, d: int) -> None:
        for c in self.classes:
            c.check(d)

    def sample(self, batch: int, n_points: int, d: int, gen: torch.Generator, *, d_eff: int | None = None):
        """``batch`` sequences of ``n_points`` (x, y) pairs: xs (B, n, d), ys (B, n), class index (B,)."""
        d_eff = d if d_eff is None else d_eff
        if not 1 <= d_eff <= d:
            raise ValueError(f"d_eff={d_eff} must lie in 1..d={d}")
        which = torch.multinomial(torch.tensor(self.weights, dtype=torch.float64), batch, replacement=True,
                                  generator=gen)
        xs = torch.zeros(batch, n_points, d)
        xs[:, :, :d_eff] = torch.randn(batch, n_points, d_eff, generator=gen)
        ys = torch.empty(batch, n_points)
        for c, cls in enumerate(self.classes):
            rows = (which == c).nonzero().flatten()
            if rows.numel():
                p = cls.draw(rows.numel(), d, d_eff, gen)
                ys[rows] = cls.apply(p, xs[rows])
        return xs, ys, which


_TERM_RE = re.compile(r"^\s*(?:([0-9.eE+-]+)\s*\*)?\s*(.+?)\s*$")


def parse_mixture(text: str | Mixture | FunctionClass) -> Mixture:
    """``"0.5*dense + 0.5*sparse(k=2)"`` (or one class) -> Mixture."""
    if isinstance(text, Mixture):
        return text
    if isinstance(text, FunctionClass):
        return Mixture((text,), (1.0,))
    terms = [t for t in re.split(r"\+(?![^(]*\))", text)]
    classes, weights = [], []
    for term in terms:
        if not term.strip():
            raise ValueError(f"cannot read the mixture {text!r}: an empty term; write e.g. 0.5*dense + 0.5*sparse(k=2)")
        m = _TERM_RE.match(term)
        weight, body = m.group(1), m.group(2)
        if weight is None and len(terms) > 1:
            raise ValueError(f"{text!r}: every class of a mixture needs a weight, e.g. 0.5*{body}")
        try:
            w = 1.0 if weight is None else float(weight)
        except ValueError:
            raise ValueError(f"{text!r}: cannot read the weight {weight!r}") from None
        classes.append(parse_class(body))
        weights.append(w)
    return Mixture(tuple(classes), tuple(weights))
