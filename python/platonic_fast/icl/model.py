"""The in-context learner: a GPT-2 backbone between a linear read-in and a linear read-out.

Tokens (``ModelConfig.tokens``)
    A sequence of n points becomes 2n tokens x₁, y₁, x₂, y₂, …, through one linear read-in.
    ``"y"`` (the study's and Garg et al.'s form, the ``paper`` preset): vectors in R^{d+1}, an x
    token is (x, 0), a y token is (0, …, 0, y) — y in the last coordinate, which x tokens never use,
    so the two kinds stay apart without a type flag (the learned positions also tell them apart by
    parity). To predict at x_i the model must first copy each x_j into the y_j token after it (or
    y_j back), a two-step circuit that training reaches only after a plateau at loss 1 whose length
    varies widely with the seed. ``"xy"`` (the ``cpu`` preset): vectors in R^{d+2}, an x token is
    (x, 0, 0) and a y token (x, y, 1), so one attention step can match x_i against the x_j stored
    with y_j. The y token adds nothing the model has not seen (x_j came just before it), the
    read-out stays causal, and the plateau all but disappears (dry runs on the cpu preset's sizes:
    with ``"y"`` one seed of the dense model was still at loss 1.0 after 4,000 steps, another at 0.31;
    with ``"xy"`` that seed reached 0.31 in 2,000 steps).
Backbone
    ``transformers.GPT2Model`` built from a ``GPT2Config`` (untrained; learned absolute positions,
    no dropout anywhere, n_positions = 2 · n_points, a vocabulary of 1 that is never used: tokens
    enter as ``inputs_embeds``).
Read-out
    A linear map of the last hidden state at the x positions 0, 2, 4, …: the prediction of y_i is
    read at x_i's token, so causal attention lets it see (x₁, y₁, …, x_i) and nothing later.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    d: int = 20            # input dimension
    n_points: int = 40     # the most (x, y) pairs a sequence may hold: 2 · n_points positions
    n_layer: int = 12
    n_embd: int = 256
    n_head: int = 8
    tokens: str = "y"      # "y": a y token is (0, …, 0, y); "xy": it is (x, y, 1) (see the module's docstring)

    def __post_init__(self):
        if self.tokens not in ("y", "xy"):
            raise ValueError(f"ModelConfig.tokens must be 'y' or 'xy', got {self.tokens!r}")
        for key in ("d", "n_points", "n_layer", "n_embd", "n_head"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"ModelConfig.{key} must be a positive integer, got {getattr(self, key)!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")

    def as_dict(self) -> dict:
        return asdict(self)


class InContextModel(nn.Module):
    """Predicts y_i from (x₁, y₁, …, x_i) for every i of a sequence."""

    def __init__(self, config: ModelConfig, *, seed: int = 0):
        super().__init__()
        from transformers import GPT2Config, GPT2Model
        from transformers.utils import logging as hf_logging

        self.config = config
        conf = GPT2Config(n_positions=2 * config.n_points, n_embd=config.n_embd, n_layer=config.n_layer,
                          n_head=config.n_head, vocab_size=1, bos_token_id=0, eos_token_id=0,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            with torch.random.fork_rng(devices=[]):  # the initialisation is the seed's alone
                torch.manual_seed(seed)
                self.read_in = nn.Linear(self.token_width(config), config.n_embd)
                self.backbone = GPT2Model(conf)
                self.read_out = nn.Linear(config.n_embd, 1)
        finally:
            hf_logging.set_verbosity(verbosity)

    @staticmethod
    def token_width(config: ModelConfig) -> int:
        return config.d + 1 if config.tokens == "y" else config.d + 2

    def tokens(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """(B, n, d), (B, n) -> (B, 2n, width), interleaved x₁, y₁, x₂, y₂, …"""
        b, n, d = xs.shape
        tok = xs.new_zeros(b, n, 2, self.token_width(self.config))
        tok[:, :, 0, :d] = xs
        tok[:, :, 1, d] = ys
        if self.config.tokens == "xy":
            tok[:, :, 1, :d] = xs
            tok[:, :, 1, d + 1] = 1.0
        return tok.reshape(b, 2 * n, -1)

    def check_inputs(self, xs: torch.Tensor, ys: torch.Tensor) -> None:
        if xs.ndim != 3 or ys.ndim != 2 or xs.shape[:2] != ys.shape:
            raise ValueError(f"xs must be (B, n, d) and ys (B, n); got {tuple(xs.shape)} and {tuple(ys.shape)}")
        if xs.shape[2] != self.config.d:
            raise ValueError(f"xs has dimension {xs.shape[2]}, the model d={self.config.d}")
        if xs.shape[1] > self.config.n_points:
            raise ValueError(f"a sequence of {xs.shape[1]} points needs {2 * xs.shape[1]} positions; the model has "
                             f"{2 * self.config.n_points} (n_points={self.config.n_points})")

    def forward(self, xs: torch.Tensor, ys: torch.Tensor, *, hidden_states: bool = False):
        """Predictions (B, n); with ``hidden_states`` also every layer's states at the x positions,
        a tuple of n_layer + 1 tensors (B, n, n_embd): the embedding output, then each block (the
        last after the final layer norm, as transformers returns them)."""
        self.check_inputs(xs, ys)
        out = self.backbone(inputs_embeds=self.read_in(self.tokens(xs, ys)), output_hidden_states=hidden_states)
        h = out.last_hidden_state[:, ::2]
        pred = self.read_out(h).squeeze(-1)
        if not hidden_states:
            return pred
        return pred, tuple(s[:, ::2] for s in out.hidden_states)


    def predict_queries(self, xs: torch.Tensor, ys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Predictions (B, Q) at each of Q query points (``queries``, (Q, d)) placed after each
        sequence's context (``xs`` (B, m, d), ``ys`` (B, m)): the context runs once and its
        attention cache serves every query, which is what B·Q separate sequences of m + 1 points
        would compute (equal up to float rounding, tested) at a fraction of the cost."""
        b, m, d = xs.shape
        if m < 1 or queries.ndim != 2 or queries.shape[1] != d:
            raise ValueError(f"predict_queries needs a context of >= 1 point and queries (Q, {d}); "
                             f"got xs {tuple(xs.shape)} and queries {tuple(queries.shape)}")
        self.check_inputs(torch.cat([xs, xs[:, :1]], 1), torch.cat([ys, ys[:, :1]], 1))  # room for the query
        q = queries.shape[0]
        # transformers 5 names the cache (argument and output) "cache", 4.x "past_key_values"
        kw = "cache" if "cache" in inspect.signature(self.backbone.forward).parameters else "past_key_values"
        ctx = self.backbone(inputs_embeds=self.read_in(self.tokens(xs, ys)), use_cache=True)
        cache = ctx["cache"] if "cache" in ctx else ctx.past_key_values
        if isinstance(cache, tuple):        # the legacy cache of older transformers: (key, value) per layer
            cache = tuple(tuple(t.repeat_interleave(q, 0) for t in layer) for layer in cache)
        else:
            cache.batch_repeat_interleave(q)
        qx = queries[None].expand(b, q, d).reshape(b * q, 1, d)
        tok = self.read_in(self.tokens(qx, qx.new_zeros(b * q, 1)))[:, :1]      # the x token alone
        pos = torch.full((b * q, 1), 2 * m, dtype=torch.long, device=xs.device)
        out = self.backbone(inputs_embeds=tok, position_ids=pos, use_cache=False, **{kw: cache})
        return self.read_out(out.last_hidden_state[:, -1]).squeeze(-1).reshape(b, q)


def autocast(device: torch.device):
    """bfloat16 autocast on CUDA, nothing on the CPU (float32 there)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
