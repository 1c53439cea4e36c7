"""platonic_fast.icl: samplers, the causal model, baselines, training and resume, bad settings."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from platonic_fast.icl import evaluate as ev
from platonic_fast.icl.model import InContextModel, ModelConfig
from platonic_fast.icl.presets import get_preset
from platonic_fast.icl.tasks import parse_class, parse_mixture
from platonic_fast.icl.train import TrainConfig, load_model, read_checkpoint, train

TINY = ModelConfig(d=4, n_points=6, n_layer=2, n_embd=32, n_head=2)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- samplers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("k", range(1, 9))
def test_sparse_has_exactly_k_nonzeros(k):
    cls = parse_class(f"sparse(k={k})")
    w = cls.draw(500, 8, 8, gen(k))["w"]
    assert ((w != 0).sum(1) == k).all()


def test_sparse_under_curriculum_stays_in_active_coordinates():
    w = parse_class("sparse(k=3)").draw(200, 8, 2, gen())["w"]
    assert ((w != 0).sum(1) == 2).all() and (w[:, 2:] == 0).all()


@pytest.mark.parametrize("spec", ["dense", "sparse(k=1)", "sparse(k=3)", "sine", "sine(lo=4,hi=4)",
                                  "combo(alpha=0.3)", "combo(alpha=0.5)", "relu(h=50)"])
def test_unit_output_variance(spec):
    xs, ys, _ = parse_mixture(spec).sample(8000, 8, 6, gen(1))
    assert abs(float(ys.var()) - 1) < 0.06, spec
    assert abs(float(ys.mean())) < 0.05, spec


@pytest.mark.parametrize("spec, var", [("dense(raw=1)", 6.0), ("sparse(k=2,raw=1)", 2.0)])
def test_unnormalised_targets(spec, var):
    mix = parse_mixture(spec)
    assert mix.output_variance(6) == var and parse_mixture(mix.spec) == mix
    xs, ys, _ = mix.sample(8000, 8, 6, gen(1))
    assert abs(float(ys.var()) / var - 1) < 0.06, spec
    assert parse_mixture("dense(raw=0)").spec == "dense" and parse_mixture("sparse(k=2)").spec == "sparse(k=2)"
    with pytest.raises(ValueError, match="raw is 0"):
        parse_class("dense(raw=2)")


def test_mixture_proportions_per_sequence():
    mix = parse_mixture("0.2*dense + 0.8*sparse(k=2)")
    xs, ys, which = mix.sample(20000, 8, 5, gen(2))
    assert abs(float((which == 0).double().mean()) - 0.2) < 0.01
    # the class holds for the whole sequence: 8 points of 5-d inputs recover each sequence's w
    w_hat = torch.linalg.lstsq(xs[:200].double(), ys[:200, :, None].double()).solution[:, :, 0]
    nonzero = (w_hat.abs() > 1e-6).sum(1)
    assert torch.equal(nonzero, torch.where(which[:200] == 0, 5, 2))


def test_specs_round_trip():
    for text in ["dense", "sparse(k=2)", "sine(lo=0.25,hi=0.25)", "0.5*dense + 0.5*sparse(k=2)",
                 "0.25*sine + 0.75*relu(h=10)"]:
        spec = parse_mixture(text).spec
        assert parse_mixture(spec).spec == spec


@pytest.mark.parametrize("text, match", [
    ("cosine", "unknown function class 'cosine'"),
    ("0.5*dense + 0.4*sparse(k=2)", "must sum to 1"),
    ("1.2*dense + -0.2*sine", "non-negative"),
    ("dense + sine", "needs a weight"),
    ("sparse", "needs k="),
    ("sparse(q=2)", "takes the parameters k"),
    ("combo(alpha=2)", "alpha must lie in"),
])
def test_bad_specs(text, match):
    with pytest.raises(ValueError, match=match):
        parse_mixture(text)


def test_nonzeros_above_d():
    with pytest.raises(ValueError, match="k=9 non-zero coefficients need 1 <= k <= d, and d=8"):
        parse_mixture("sparse(k=9)").check(8)
    with pytest.raises(ValueError, match="1 <= k <= d"):
        TrainConfig(mixture="0.5*dense + 0.5*sparse(k=5)").check(TINY)
    from platonic_fast.icl.tasks import COMBOS

    TrainConfig(mixture=COMBOS).check(TINY)        # finding 3's control trains on the combinations
    assert len(parse_mixture(COMBOS).classes) == 11


# --- the model ----------------------------------------------------------------------------------

@pytest.mark.parametrize("tokens", ["y", "xy"])
def test_readout_is_causal(tokens):
    model = InContextModel(replace(TINY, tokens=tokens), seed=3).eval()
    xs, ys, _ = parse_mixture("dense").sample(3, 6, 4, gen(3))
    with torch.no_grad():
        base = model(xs, ys)
        for i in range(6):
            x2, y2 = xs.clone(), ys.clone()
            y2[:, i:] += torch.randn(3, 6 - i, generator=gen(i))      # y_i and every later y
            x2[:, i + 1:] += torch.randn(3, 5 - i, 4, generator=gen(i))  # every later x
            moved = model(x2, y2)
            assert torch.equal(moved[:, :i + 1], base[:, :i + 1]), i
            if i < 5:
                assert not torch.allclose(moved[:, i + 1:], base[:, i + 1:])


def test_hidden_states_at_x_positions():
    model = InContextModel(TINY).eval()
    xs, ys, _ = parse_mixture("dense").sample(5, 6, 4, gen())
    h = ev.hidden_states(model, xs, ys, batch_size=2)
    assert h.shape == (5, 6, TINY.n_layer + 1, TINY.n_embd)
    with torch.no_grad():
        assert torch.allclose(model.read_out(h[:, :, -1]).squeeze(-1), model(xs, ys), atol=1e-6)


def test_sequence_longer_than_positions():
    model = InContextModel(TINY)
    xs, ys, _ = parse_mixture("dense").sample(2, 7, 4, gen())
    with pytest.raises(ValueError, match="7 points needs 14 positions; the model has 12"):
        model(xs, ys)
    with pytest.raises(ValueError, match="n_start=9 must lie in 1..n_points=6"):
        TrainConfig(mixture="dense", curriculum={"d_start": 2, "n_start": 9, "every": 5}).check(TINY)


def test_model_config_errors():
    with pytest.raises(ValueError, match="multiple of n_head"):
        ModelConfig(d=4, n_points=6, n_layer=1, n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="tokens must be 'y' or 'xy'"):
        ModelConfig(d=4, n_points=6, n_layer=1, n_embd=32, n_head=4, tokens="x")


def test_xy_tokens():
    model = InContextModel(replace(TINY, tokens="xy"))
    xs, ys, _ = parse_mixture("dense").sample(2, 3, 4, gen())
    tok = model.tokens(xs, ys)
    assert tok.shape == (2, 6, 6)
    assert torch.equal(tok[:, 1::2, :4], xs) and torch.equal(tok[:, 1::2, 4], ys) and (tok[:, 1::2, 5] == 1).all()
    assert torch.equal(tok[:, ::2, :4], xs) and (tok[:, ::2, 4:] == 0).all()


# --- baselines against closed forms -------------------------------------------------------------

def test_least_squares_is_minimum_norm():
    xs, ys, _ = parse_mixture("dense").sample(20, 9, 5, gen(4))
    pred = ev.baseline_least_squares(xs, ys)
    x, y = xs.double().numpy(), ys.double().numpy()
    for s in range(20):
        for i in range(1, 9):
            w = np.linalg.lstsq(x[s, :i], y[s, :i], rcond=None)[0]   # minimum norm when i < d
            assert abs(pred[s, i].item() - x[s, i] @ w) < 1e-9
    assert float(pred[:, 0].abs().max()) == 0.0
    # noise-free and over-determined: exact from the d-th example on
    assert float((pred[:, 5:] - ys[:, 5:].double()).abs().max()) < 1e-5


def test_ridge_averaging_knn_closed_forms():
    xs, ys, _ = parse_mixture("sine").sample(6, 7, 3, gen(5))
    x, y = xs.double().numpy(), ys.double().numpy()
    ridge, avg, knn = ev.baseline_ridge(xs, ys, 0.7), ev.baseline_averaging(xs, ys), ev.baseline_knn(xs, ys, 3)
    for s in range(6):
        for i in range(1, 7):
            a, b = x[s, :i], y[s, :i]
            w = np.linalg.solve(a.T @ a + 0.7 * np.eye(3), a.T @ b)
            assert abs(ridge[s, i].item() - x[s, i] @ w) < 1e-9
            assert abs(avg[s, i].item() - x[s, i] @ (a.T @ b / i)) < 1e-9
            near = np.argsort(np.linalg.norm(a - x[s, i], axis=1))[:3]
            assert abs(knn[s, i].item() - b[near].mean()) < 1e-9
    assert float(knn[:, 0].abs().max()) == 0.0 and float(avg[:, 0].abs().max()) == 0.0


def test_lasso_soft_thresholds_an_orthogonal_design():
    # X^T X = i·I: the Lasso (‖y − Xw‖²/(2i) + α‖w‖₁) is the soft threshold of X^T y / i at α
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((4, 4)))
    x = torch.zeros(1, 5, 4, dtype=torch.float64)
    x[0, :4] = torch.from_numpy(q * 2.0)          # 4 examples, X^T X = 4·I
    x[0, 4] = torch.tensor([1.0, -2.0, 0.5, 3.0])
    w = torch.tensor([0.9, -0.05, 0.3, 0.0], dtype=torch.float64)
    y = (x[0] @ w)[None]
    out = ev.baseline_lasso(x, y, alphas=(0.1,))[0.1]
    z = x[0, :4].T @ y[0, :4] / 4
    w_hat = torch.sign(z) * (z.abs() - 0.1).clamp_min(0)
    assert abs(out[0, 4].item() - (x[0, 4] @ w_hat).item()) < 1e-6


def test_bootstrap_interval_covers_the_mean():
    err = torch.rand(1280, 4, generator=gen(6)).double()
    c = ev.curve(err)
    assert all(lo < m < hi for lo, m, hi in zip(c["lo"], c["mean"], c["hi"]))
    width = c["hi"][0] - c["lo"][0]
    assert abs(width - 2 * 1.645 * err[:, 0].std().item() / math.sqrt(1280)) < 0.004


def test_unknown_baseline():
    with pytest.raises(ValueError, match="unknown baselines"):
        ev.baselines(torch.zeros(2, 3, 2), torch.zeros(2, 3), names=("zero", "oracle"))


# --- training -----------------------------------------------------------------------------------

def _fixed_batch_loss(model):
    xs, ys = ev.eval_sequences("dense", TINY.d, TINY.n_points, count=256, seed=7)
    return float(ev.squared_errors(ev.predict(model, xs, ys), ys).mean())


def test_training_lowers_the_loss():
    cfg = TrainConfig(mixture="dense", steps=25, batch_size=32, lr=3e-3, seed=1)
    before = _fixed_batch_loss(InContextModel(TINY, seed=1).eval())
    after = _fixed_batch_loss(train(TINY, cfg, progress=False, threads=1).model)
    assert after < 0.8 * before


def test_resume_equals_uninterrupted(tmp_path):
    cfg = TrainConfig(mixture="0.5*dense + 0.5*sparse(k=2)", steps=8, batch_size=8, lr=1e-3, save_every=3,
                      log_every=2, curriculum={"d_start": 2, "n_start": 3, "every": 3})
    whole = train(TINY, cfg, tmp_path / "a", progress=False)
    part = train(TINY, cfg, tmp_path / "b", progress=False, stop_at=5)
    assert part.step == 5
    rest = train(TINY, cfg, tmp_path / "b", progress=False)
    assert rest.resumed_from == 5 and rest.step == 8
    for (k, p), q in zip(whole.model.state_dict().items(), rest.model.state_dict().values()):
        assert torch.equal(p, q), k
    assert whole.history == rest.history
    ta, _ = read_checkpoint(tmp_path / "a")
    tb, meta = read_checkpoint(tmp_path / "b")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert meta["complete"] == "1"
    model, info = load_model(tmp_path / "b")
    assert info["step"] == 8 and info["train_config"] == cfg
    with pytest.raises(ValueError, match="other settings.*lr: 0.001 -> 0.002"):
        train(TINY, TrainConfig(**{**cfg.as_dict(), "lr": 2e-3}), tmp_path / "b", progress=False)


# --- the command line and the study's pieces ----------------------------------------------------

@pytest.mark.parametrize("argv, match", [
    (["train", "--mixture", "0.5*dense + 0.4*sine", "--out", "x"], "must sum to 1"),
    (["train", "--mixture", "cosine", "--out", "x"], "unknown function class 'cosine'"),
    (["train", "--mixture", "sparse(k=9)", "--out", "x"], "k=9 non-zero coefficients need 1 <= k <= d, and d=6"),
    (["train", "--mixture", "dense", "--out", "x", "--curriculum", "2,30,5"], "n_start=30 must lie in 1..n_points=14"),
    (["train", "--mixture", "dense", "--out", "x", "--preset", "gpu"], "unknown preset 'gpu'"),
    (["eval", "x", "--task", "combo(alpha=3)"], "alpha must lie in"),
])
def test_cli_bad_settings(argv, match, capsys, tmp_path, monkeypatch):
    from platonic_fast.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["icl", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("platonic-fast icl: error:") and match in err, err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cli_train_eval_align(tmp_path, capsys):
    import json

    from platonic_fast.cli import main

    for name, seed in (("a", 0), ("b", 1)):
        assert main(["icl", "train", "--mixture", "0.5*dense + 0.5*sparse(k=2)", "--out", str(tmp_path / name),
                     "--steps", "2", "--seed", str(seed), "--no-progress", "--threads", "1"]) == 0
    assert "trained 0.5*dense + 0.5*sparse(k=2) to step 2" in capsys.readouterr().out
    assert main(["icl", "eval", str(tmp_path / "a"), "--task", "sparse(k=2)", "--count", "16", "--baselines",
                 "least_squares", "zero", "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "least_squares" in out and "a  " in out
    curves = json.loads((tmp_path / "ev" / "eval.json").read_text())["tasks"]["sparse(k=2)"]
    cpu = get_preset("cpu").model
    assert curves["least_squares"]["mean"][cpu.d] < 1e-6 and len(curves["a"]["mean"]) == cpu.n_points
    assert main(["icl", "align", str(tmp_path / "a"), str(tmp_path / "b"), "--sequences", "4", "--topk", "3",
                 "--permutations", "3", "--out", str(tmp_path / "al")]) == 0
    res = json.loads((tmp_path / "al" / "align.json").read_text())
    assert res["samples"] == 4 * cpu.n_points and res["models"] == ["a", "b"]
    m = res["metrics"]["mutual_knn"]
    assert 0 <= m["best"][0][1] <= 1 and m["best"][0][1] == m["best"][1][0]
    assert (tmp_path / "al" / "align.png").stat().st_size > 0


def test_spearman_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    from platonic_fast.icl.study import spearman

    a, b = [3, 1, 2, 2, 5, 0.5], [1.0, 0.2, 0.3, 0.1, 0.9, 0.0]
    assert abs(spearman(a, b) - stats.spearmanr(a, b).statistic) < 1e-12


# --- issue 21: the Bayes baseline, the gate, stopping, snapshots ---------------------------------

def test_bayes_sparse_is_the_posterior_mean():
    """Against the textbook form: per support, y ~ N(0, σ_w² X_S X_Sᵀ + σ² I) (scipy's density)
    and E[y_q | y, S] = σ_w² x_q,Sᵀ X_Sᵀ Σ⁻¹ y, averaged over the supports' posterior."""
    import itertools

    stats = pytest.importorskip("scipy.stats")
    g = gen(3)
    xs, ys, _ = parse_mixture("sparse(k=2)").sample(3, 6, 5, g)
    ys = ys + 0.1 * torch.randn(ys.shape, generator=g)
    got = ev.baseline_bayes_sparse(xs, ys, 2, noise=0.01).numpy()
    x, y = xs.double().numpy(), ys.double().numpy()
    for q in range(3):
        assert got[q, 0] == 0
        for i in range(1, 6):
            logs, means = [], []
            for s in itertools.combinations(range(5), 2):
                xsup = x[q, :i][:, list(s)]
                cov = 0.5 * xsup @ xsup.T + 0.01 * np.eye(i)
                logs.append(stats.multivariate_normal(np.zeros(i), cov).logpdf(y[q, :i]))
                means.append(0.5 * x[q, i, list(s)] @ xsup.T @ np.linalg.solve(cov, y[q, :i]))
            w = np.exp(np.array(logs) - max(logs))
            assert abs(got[q, i] - w @ np.array(means) / w.sum()) < 1e-10


def test_bayes_sparse_beats_lasso_on_its_class():
    xs, ys = ev.eval_sequences("sparse(k=1)", 6, 8, count=64, seed=3)
    b = ev.baselines(xs, ys, names=("least_squares", "bayes_sparse"), sparse_k=1)
    err = {k: float(ev.squared_errors(v, ys)[:, 1:6].mean()) for k, v in b.items()}
    assert err["bayes_sparse"] < 0.5 * err["least_squares"]
    with pytest.raises(ValueError, match="sparse_k="):
        ev.baselines(xs, ys, names=("bayes_sparse",))
    with pytest.raises(ValueError, match="1 <= k <= d=6"):
        ev.baseline_bayes_sparse(xs, ys, 7)


def test_sigterm_saves_and_resumes_bitwise(tmp_path):
    import os
    import signal

    cfg = TrainConfig(mixture="sparse(k=1)", steps=6, batch_size=8, lr=1e-3, save_every=2, log_every=2,
                      snapshots=(2, 6))
    whole = train(TINY, cfg, tmp_path / "a", progress=False)
    lines = []

    def report(line):  # SIGTERM arrives right after the first save (step 2): the run ends there
        lines.append(line)
        if len(lines) == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    part = train(TINY, cfg, tmp_path / "b", progress=False, report=report)
    assert part.step == 2 and len(lines) == 1 and lines[0].startswith("step 2/6 loss")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # the handler is put back
    rest = train(TINY, cfg, tmp_path / "b", progress=False)
    assert rest.resumed_from == 2
    for p, q in zip(whole.model.state_dict().values(), rest.model.state_dict().values()):
        assert torch.equal(p, q)
    _, info = load_model(tmp_path / "a" / "snapshots" / "step-000002.safetensors")
    assert info["step"] == 2 and not info["complete"]
    assert (tmp_path / "a" / "snapshots" / "step-000006.safetensors").exists()


def test_gate_reads_a_checkpoint(tmp_path, capsys):
    from platonic_fast.cli import main
    from platonic_fast.icl.study import sparse_gate

    cfg = TrainConfig(mixture="sparse(k=1)", steps=2, batch_size=8, lr=1e-3)
    train(TINY, cfg, tmp_path / "s", progress=False)
    g = sparse_gate(tmp_path / "s", count=16)
    assert g["step"] == 2 and g["window_examples"] == [1, 2, 3] and not g["passed"]
    assert g["nse"]["bayes_sparse"]["mean"] < g["nse"]["least_squares"]["mean"]
    assert abs(g["required_gain"] - 0.5 * g["lasso_gap"]) < 1e-12
    assert main(["icl", "gate", str(tmp_path / "s"), "--count", "16", "--json", str(tmp_path / "g.json")]) == 1
    assert "FAIL" in capsys.readouterr().out and (tmp_path / "g.json").exists()
    train(TINY, TrainConfig(mixture="dense", steps=1, batch_size=4), tmp_path / "d", progress=False)
    with pytest.raises(ValueError, match="sparse specialist"):
        sparse_gate(tmp_path / "d", count=8)


def test_cli_train_model_of_a_preset(tmp_path, monkeypatch, capsys):
    from platonic_fast.cli import main
    from platonic_fast.icl.presets import replica

    p = get_preset("fair")
    assert replica(p, "sparse", 2) == ("sparse@2", "sparse(k=1)", 201)
    monkeypatch.chdir(tmp_path)
    assert main(["icl", "train", "--preset", "fair", "--model", "sparse@1", "--steps", "1", "--no-progress",
                 "--threads", "1"]) == 0
    _, info = load_model(tmp_path / "results" / "icl-fair" / "sparse@1")
    assert info["train_config"].seed == 101 and info["train_config"].mixture == "sparse(k=1)"
    assert "step 1/1" in capsys.readouterr().out
    assert main(["icl", "train", "--preset", "fair", "--model", "sine", "--steps", "1"]) == 2
    assert "has no model 'sine'" in capsys.readouterr().err


def test_tiny_run_says_it_is_tiny(tmp_path, monkeypatch):
    """Issue 24, item 5: findings resting on untrained models are withheld; training.png of a
    short run shows its points."""
    import copy
    import json
    from pathlib import Path

    from platonic_fast.icl import plots
    from platonic_fast.icl.study import competence_check, format_headline, headline

    committed = json.loads((Path(__file__).parents[1] / "results" / "icl" / "study.json").read_text())
    check = competence_check(committed)
    assert check["untrained"] == [] and all(f["above"] for f in check["alignment_above_floor"].values())
    r = copy.deepcopy(committed)
    r["bridge"]["competence"]["sine"]["sine"] = 1.3
    for view in r["bridge"]["analysis"]["cknna"].values():
        view["untrained_mean"] = {"untrained": 0.99}
    r["headline"] = h = headline(r)
    assert h["check"]["tiny"] and h["check"]["untrained"] == ["sine"] and h["check"]["withheld"] == ["f3", "f4"]
    assert not h["check"]["alignment_above_floor"]["cknna"]["above"]
    text = format_headline(r)
    assert "TOO SHORT" in text and "sine 1.30" in text
    assert sum("[withheld" in line for line in text.splitlines()) == 1 + 6   # 3., and 4. for six predictors
    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or path)
    r["training"] = {"dense": {"mixture": "dense", "steps": 3, "history": [[3, 0.97]]}}
    plots.fig_training(r, tmp_path / "t.png")
    (line,) = figs[0].axes[0].get_lines()
    assert line.get_marker() == "o" and "findings withheld" in " ".join(t.get_text() for t in figs[0].axes[0].texts)


@pytest.mark.slow
def test_gpu_plan_and_dry_run(tmp_path):
    """Issue 21 item 8: the throughput calibration's arithmetic, and the whole GPU path at tiny
    sizes on the CPU."""
    from platonic_fast.icl import gpu

    assert gpu.plan_steps(40.0, 70.0, 2400, budget_s=480, reserve_s=90, max_steps=20_000) == 2400 + 40 * 320
    assert gpu.plan_steps(100.0, 70.0, 2400, budget_s=480, reserve_s=90, max_steps=20_000) == 20_000
    assert gpu.plan_steps(1.0, 500.0, 7, budget_s=480, reserve_s=90, max_steps=20_000) == 7
    with pytest.raises(ValueError, match="positive"):
        gpu.plan_steps(0.0, 1.0, 1, budget_s=480, reserve_s=90, max_steps=10)
    res = gpu.run(tmp_path, dry_run=True, log=lambda *_: None)
    assert res["dry_run"] and res["train"]["steps"] == 12 and len(res["models"]) == 6
    assert set(res["finding1"]["sparse(k=1)"]["gate"]) == {"sparse", "sparse@1"}
    _, info = load_model(tmp_path / "sparse@1" / "weights.safetensors")
    assert info["train_config"].seed == 101 and info["step"] == 12
    assert (tmp_path / "icl_gpu.json").exists()


# --- the convergence study (issue 21 item 6), on tiny models --------------------------------------

def test_fixed_query_bank_and_truth():
    from platonic_fast.icl.convergence import fixed_query_bank

    b = fixed_query_bank(["dense", "sparse(k=1)"], 5, 4, 6, probes=8)
    assert b["xs"].shape == (10, 6, 4) and b["truth"].shape == (10, 8)
    assert torch.equal(b["xs"][:, -1], b["query"].expand(10, 4))        # one shared query
    assert b["labels"].tolist() == [0] * 5 + [1] * 5
    with pytest.raises(ValueError, match="per_class >= 2"):
        fixed_query_bank(["dense"], 1, 4, 6)


def test_predict_queries_matches_full_sequences():
    """One pass over the context with its attention cache = one full sequence per query."""
    m = InContextModel(TINY, seed=3).eval()
    g = gen(4)
    xs, ys = torch.randn(3, 4, TINY.d, generator=g), torch.randn(3, 4, generator=g)
    q = torch.randn(5, TINY.d, generator=g)
    with torch.no_grad():
        got = m.predict_queries(xs, ys, q)
        full = torch.cat([xs[:, None].expand(3, 5, 4, TINY.d), q[None, :, None].expand(3, 5, 1, TINY.d)], 2)
        ref = m(full.reshape(15, 5, TINY.d), torch.cat([ys[:, None].expand(3, 5, 4), torch.zeros(3, 5, 1)], 2)
                .reshape(15, 5))[:, -1].reshape(3, 5)
    assert got.shape == (3, 5) and torch.allclose(got, ref, atol=1e-5)
    with pytest.raises(ValueError, match="queries"):
        m.predict_queries(xs, ys, torch.randn(5, TINY.d + 1))


def test_mantel_exact_and_sampled():
    from platonic_fast.icl.convergence import mantel

    g = gen(0)
    x = torch.randn(5, 3, generator=g)
    m = torch.cdist(x, x)
    exact = mantel(m, m)
    assert exact["exact"] and exact["permutations"] == 120 and abs(exact["statistic"] - 1) < 1e-12
    assert exact["p_value"] <= 2 / 120 + 1e-12      # only the identity (and any symmetry of m) reaches 1
    sampled = mantel(m, m, permutations=50)
    assert not sampled["exact"] and sampled["permutations"] == 50
    assert sampled["p_value"] <= 2 / 51 + 1e-12     # scipy's add-one p-value for random relabellings
    with pytest.raises(ValueError, match="n >= 3"):
        mantel(torch.zeros(2, 2), torch.zeros(2, 2))


def test_mantel_within_strata_keeps_the_mask():
    """Relabelling within strata never moves a pair across the mask: exact count (3!)^2, and the
    same-stratum entries (huge here) never enter the statistic."""
    from platonic_fast.icl.convergence import mantel

    rng = np.random.default_rng(1)
    c = rng.normal(size=6)
    b = (c[:, None] + c[None, :]) / 2
    a = b.copy()
    stratum = np.array([0, 0, 0, 1, 1, 1])
    cross = stratum[:, None] != stratum[None, :]
    a[~cross] = 1e6
    res = mantel(a, b, strata=[np.arange(3), np.arange(3, 6)], between_strata=True, alternative="greater")
    assert res["exact"] and res["permutations"] == 36 and res["pairs"] == 9
    assert abs(res["statistic"] - 1) < 1e-12 and res["p_value"] <= 2 / 36 + 1e-12
    with pytest.raises(ValueError, match="one size"):
        mantel(a, b, strata=[np.arange(2), np.arange(2, 6)])


def test_competence_trend_matches_scipy():
    """The pooled rho is scipy's Spearman; within-run relabelling is exact for small runs, and an
    alignment that rises with competence inside every run gets the smallest p-value there is."""
    from scipy.stats import spearmanr

    from platonic_fast.icl.convergence import competence_trend

    rows = [{"run": run, "step": s, "nse": 1.0 / s + off, "score": 0.1 * s + off}
            for run, off in (("a", 0.0), ("b", 0.5)) for s in (1, 2, 3, 4)]
    t = competence_trend(rows, "score")
    ref = spearmanr([-r["nse"] for r in rows], [r["score"] for r in rows]).statistic
    assert abs(t["pooled"]["statistic"] - ref) < 1e-12
    assert t["per_run"] == {"a": 1.0, "b": 1.0} and t["within_run_mean"]["statistic"] == 1.0
    assert t["within_run_mean"]["exact"] and t["within_run_mean"]["permutations"] == 24 ** 2
    assert abs(t["within_run_mean"]["p_value"] - 1 / 24 ** 2) < 1e-12
    flat = competence_trend([{**r, "score": 0.3} for r in rows], "score")
    assert math.isnan(flat["pooled"]["p_value"]) and "constant" in flat["pooled"]["note"]


@pytest.mark.slow
def test_capability_family_on_tiny_checkpoints(tmp_path):
    from platonic_fast.icl.convergence import capability_family, family_tests, fixed_query_bank

    for run, seed in (("r", 0), ("q", 1)):
        cfg = TrainConfig(mixture="dense", steps=3, batch_size=8, lr=1e-3, snapshots=(1, 2, 3), seed=seed)
        train(TINY, cfg, tmp_path / run, progress=False)
    ckpts = {f"{run}@{s}": (run, s, tmp_path / run / "snapshots" / f"step-{s:06d}.safetensors")
             for run in ("r", "q") for s in (1, 2, 3)}
    bank = fixed_query_bank(["dense", "sparse(k=1)"], 8, TINY.d, TINY.n_points, probes=6)
    fam = capability_family(ckpts, bank, topk=3, permutations=3)
    assert [r["step"] for r in fam["rows"]] == [1, 2, 3, 1, 2, 3]
    pm = fam["alignment"]["per_model"]["r@3"]
    assert 0 <= pm["hidden_vs_truth"]["best"] <= 1 and "calibrated" in pm["hidden_vs_truth"]
    assert len(fam["alignment"]["pairs"]) == 15
    out = family_tests(fam["rows"], fam["alignment"]["pairs"], permutations=20)
    assert set(out["truth"]) == {"hidden_truth", "hidden_truth_calibrated", "predictions_truth",
                                 "predictions_truth_calibrated"}
    assert set(out["truth"]["hidden_truth"]["per_run"]) == {"r", "q"}
    assert out["pairs"]["hidden"]["vs_competence"]["pairs"] == 9          # cross-run pairs only
    assert out["hidden_vs_predictions"]["permutations"] == 20


@pytest.mark.slow
def test_controls_on_tiny_models():
    """Finding 3's competence check and finding 4's second range run end to end (untrained models)."""
    from platonic_fast.icl.study import controls

    p = replace(get_preset("controls"), model=TINY, eval_count=8)
    models = {name: InContextModel(TINY, seed=s).eval() for name, _, s in p.models}
    out = controls(models, p, log=lambda *_: None)
    assert set(out["mixture_competence"]) == {"alpha=1", "alpha=0"}
    assert isinstance(out["mixture_competent"], bool)
    assert [r["omega"] for r in out["frequency"]["rows"]][-3:] == [3.0, 3.5, 4.0]
    assert "sine-hi" in out["frequency"]["groups"]


def test_seed_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    from platonic_fast.icl.study import seed_interval

    v = [0.31, 0.27, 0.35]
    got = seed_interval(v)
    lo, hi = stats.t.interval(0.9, 2, loc=np.mean(v), scale=stats.sem(v))
    assert abs(got["lo"] - lo) < 1e-12 and abs(got["hi"] - hi) < 1e-12 and got["seeds"] == 3
    one = seed_interval([0.3])
    assert one["mean"] == 0.3 and math.isnan(one["lo"])


@pytest.mark.slow
def test_fair_findings_over_replicas(tmp_path):
    from platonic_fast.icl.study import fair_findings

    p = replace(get_preset("fair"), model=TINY, eval_count=8)
    for run, mixture, seed in (("dense", "dense", 0), ("sparse", "sparse(k=1)", 1),
                               ("dense+sparse", "0.5*dense + 0.5*sparse(k=1)", 2), ("dense@1", "dense", 100),
                               ("sparse@1", "sparse(k=1)", 101), ("dense+sparse@1", "0.5*dense + 0.5*sparse(k=1)", 102),
                               ("dense@2", "dense", 200)):                  # an incomplete third set: ignored
        train(TINY, TrainConfig(mixture=mixture, steps=1, batch_size=4, seed=seed), tmp_path / run, progress=False)
    out = fair_findings(tmp_path, preset=p, log=lambda *_: None)
    assert [s["replica"] for s in out["replicas"]] == [0, 1]
    iv = out["over_seeds"]["f1_sparse"]["bayes_sparse"]
    assert iv["seeds"] == 2 and iv["lo"] <= iv["mean"] <= iv["hi"]
    assert set(out["over_seeds"]["f2_position"]) == {1, 2, 3, 4}


@pytest.mark.slow
def test_cli_converge_on_snapshots(tmp_path, capsys):
    import json

    from platonic_fast.cli import main

    for run, seed in (("a", 0), ("b", 1), ("c", 2)):
        train(TINY, TrainConfig(mixture="dense", steps=2, batch_size=4, seed=seed, snapshots=(1, 2)), tmp_path / run,
              progress=False)
    assert main(["icl", "converge", "--root", str(tmp_path), "--per-class", "6", "--permutations", "2",
                 "--trend-permutations", "20"]) == 0
    assert "competence vs alignment" in capsys.readouterr().out
    res = json.loads((tmp_path / "convergence.json").read_text())
    assert len(res["family"]["rows"]) == 6 and (tmp_path / "convergence.png").exists()
    assert "too few" in res["within_runs"]["all"]["note"]                 # 2 steps per run
    among = res["among_runs"]
    assert among["step"] == 2 and among["checkpoints"] == ["a@step2", "b@step2", "c@step2"]
    assert among["hidden_vs_predictions"]["exact"] and among["hidden_vs_predictions"]["permutations"] == 6
    assert main(["icl", "converge", "--root", str(tmp_path), "--root", str(tmp_path)]) == 2   # --out needed
