"""The in-context learner: a GPT-2 backbone between a linear read-in and a linear read-out.

Tokens
    A sequence of n points becomes 2n tokens x₁, y₁, x₂, y₂, …, each a vector in R^{d+1}: an x token
    is (x, 0), a y token is (0, …, 0, y) — y in the last coordinate, which x tokens never use, so
    one linear read-in serves both and the two kinds stay apart without a type flag (the learned
    position embeddings also tell them apart by parity).
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

    def __post_init__(self):
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
                self.read_in = nn.Linear(config.d + 1, config.n_embd)
                self.backbone = GPT2Model(conf)
                self.read_out = nn.Linear(config.n_embd, 1)
        finally:
            hf_logging.set_verbosity(verbosity)

    @staticmethod
    def tokens(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """(B, n, d), (B, n) -> (B, 2n, d + 1), interleaved x₁, y₁, x₂, y₂, …"""
        b, n, d = xs.shape
        tok = xs.new_zeros(b, n, 2, d + 1)
        tok[:, :, 0, :d] = xs
        tok[:, :, 1, d] = ys
        return tok.reshape(b, 2 * n, d + 1)

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


def autocast(device: torch.device):
    """bfloat16 autocast on CUDA, nothing on the CPU (float32 there)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
