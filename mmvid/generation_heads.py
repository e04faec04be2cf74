"""Text-to-video generation heads on top of a decoder-only LLM's last hidden states.

The LLM generates a video's tokens autoregressively, in the video tokenizer's token order: the
hidden state at the position before token i predicts token i. A head turns that hidden state into
a loss (training) or a sampled token (generation):

    discrete    DiscreteVideoHead: a Linear to the codebook, the "extended output vocabulary" (the
                caller places codebook ids after the text vocabulary, at an offset it records).
                Each position may be restricted to a range of ids [low, high).
    flow        FlowVideoHead(mode="flow"): continuous tokens from a small per-token network
                conditioned on the hidden state, trained by flow matching (rectified flow: Lipman et
                al. 2023, "Flow Matching for Generative Modeling"; Liu et al. 2023, "Flow Straight
                and Fast") and sampled by Euler integration. This is MAR's per-token head (Li et al.
                2024, "Autoregressive Image Generation without Vector Quantization"), with flow
                matching in place of its diffusion loss.
    regression  FlowVideoHead(mode="regression"): the same network regressing the token directly
                (MSE), as VTok does; deterministic.

    head = build_generation_head("flow", hidden_size=lm_hidden, token_dim=tokenizer.token_dim)
    loss = head.loss(hidden, target)                                        # (M, H), (M, D) -> ()
    token = head.sample(hidden, uncond=hidden_without_text, guidance_scale=3.0, generator=g)  # (B, D)

Classifier-free guidance mixes a conditional and an unconditional prediction as
`u + s * (c - u)` (log-probabilities for the discrete head, velocities / predictions for the flow
head). With s == 1, or no unconditional input, only the conditional prediction is computed, so
guidance scale 1 is exactly unguided sampling (bit for bit, same generator draws).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmvid.generation import sample_tokens

GENERATION_HEADS = ("discrete", "flow", "regression")
FLOW_MODES = ("flow", "regression")


def _describe(x) -> str:
    return f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def _check_hidden(hidden, hidden_size: int, name: str = "hidden") -> None:
    """ValueError unless `hidden` is a float (B, hidden_size) tensor."""
    if not isinstance(hidden, torch.Tensor) or not hidden.is_floating_point():
        raise ValueError(f"expected {name} to be a float tensor of shape (B, {hidden_size}), "
                         f"got {_describe(hidden)}")
    if hidden.ndim != 2 or hidden.shape[-1] != hidden_size:
        raise ValueError(f"expected {name} of shape (B, {hidden_size}), got {tuple(hidden.shape)}")


def _check_uncond(uncond, hidden: torch.Tensor) -> None:
    if uncond is not None and (not isinstance(uncond, torch.Tensor) or uncond.shape != hidden.shape):
        raise ValueError(f"expected uncond of the same shape as hidden {tuple(hidden.shape)}, "
                         f"got {_describe(uncond)}")


# ----------------------------------------------------------------------------------------------
# Classifier-free guidance (sampling itself: mmvid.generation.sample_tokens)
# ----------------------------------------------------------------------------------------------


def _guide(cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + s * (cond - uncond)."""
    return uncond + guidance_scale * (cond - uncond)


# ----------------------------------------------------------------------------------------------
# Discrete head
# ----------------------------------------------------------------------------------------------


class DiscreteVideoHead(nn.Module):
    """Codebook logits from the LLM hidden state: (..., hidden_size) -> (..., codebook_size).

    The codebook part of an extended output vocabulary; `low`/`high` (long, broadcastable to the
    hidden states' leading shape) restrict each position to ids in [low, high), as a tokenizer with
    typed slots (e.g. SweetTok's part-of-speech codebooks) needs.
    """

    def __init__(self, hidden_size: int, codebook_size: int):
        super().__init__()
        if hidden_size < 1 or codebook_size < 1:
            raise ValueError(f"hidden_size and codebook_size must be >= 1, "
                             f"got {hidden_size}, {codebook_size}")
        self.hidden_size, self.codebook_size = hidden_size, codebook_size
        self.proj = nn.Linear(hidden_size, codebook_size)

    def excluded(self, low, high, batch_shape: torch.Size, device: torch.device) -> torch.Tensor | None:
        """Bool (*batch_shape, K), True for ids outside [low, high); None when neither is given."""
        if low is None and high is None:
            return None
        K = self.codebook_size
        bounds = []
        for name, value, default in (("low", low, 0), ("high", high, K)):
            value = torch.as_tensor(default if value is None else value, device=device)
            if value.is_floating_point() or value.dtype == torch.bool:
                raise ValueError(f"{name} must be integer ids, got {value.dtype}")
            try:
                shape = torch.broadcast_shapes(value.shape, batch_shape)
            except RuntimeError:
                shape = None
            if shape != batch_shape:
                raise ValueError(f"{name} of shape {tuple(value.shape)} does not broadcast to the hidden "
                                 f"states' leading shape {tuple(batch_shape)}")
            bounds.append(value.expand(batch_shape))
        low, high = bounds
        if low.numel() and (int(low.min()) < 0 or int(high.max()) > K or bool((low >= high).any())):
            raise ValueError(f"need 0 <= low < high <= codebook_size ({K}), "
                             f"got low in [{int(low.min())}, {int(low.max())}], "
                             f"high in [{int(high.min())}, {int(high.max())}]")
        ids = torch.arange(K, device=device)
        return (ids < low[..., None]) | (ids >= high[..., None])

    def logits(self, hidden: torch.Tensor, low=None, high=None) -> torch.Tensor:
        """(..., H) -> (..., K), -inf outside [low, high) when given."""
        if not isinstance(hidden, torch.Tensor) or hidden.ndim < 1 or hidden.shape[-1] != self.hidden_size:
            raise ValueError(f"expected hidden of shape (..., {self.hidden_size}), got {_describe(hidden)}")
        logits = self.proj(hidden)
        excluded = self.excluded(low, high, hidden.shape[:-1], hidden.device)
        return logits if excluded is None else logits.masked_fill(excluded, float("-inf"))

    def loss(self, hidden: torch.Tensor, target: torch.Tensor, low=None, high=None) -> torch.Tensor:
        """Cross-entropy of target ids (M,) under the masked logits of hidden (M, H)."""
        _check_hidden(hidden, self.hidden_size)
        M, K = hidden.shape[0], self.codebook_size
        if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.shape != (M,):
            raise ValueError(f"expected target ids of shape ({M},), got {_describe(target)}")
        target = target.long()
        if M and (int(target.min()) < 0 or int(target.max()) >= K):
            raise ValueError(f"target ids must be in [0, {K}), "
                             f"got values in [{int(target.min())}, {int(target.max())}]")
        logits = self.logits(hidden, low, high)  # (M, K)
        if low is not None or high is not None:
            outside = torch.isneginf(logits.gather(-1, target[:, None]))[:, 0]
            if bool(outside.any()):
                i = int(outside.nonzero()[0])
                raise ValueError(f"{int(outside.sum())} target ids lie outside their [low, high) range, "
                                 f"e.g. position {i}: id {int(target[i])}")
        return F.cross_entropy(logits.float(), target)

    @torch.no_grad()
    def sample(self, hidden: torch.Tensor, uncond: torch.Tensor | None = None, guidance_scale: float = 1.0,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, low=None, high=None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """One codebook id per row of hidden (B, H) -> (B,) long, inside [low, high) when given.

        temperature 0 is greedy; otherwise logits / temperature, then top-k / top-p, then a draw
        (mmvid.generation.sample_tokens, the text sampler).
        """
        _check_hidden(hidden, self.hidden_size)
        _check_uncond(uncond, hidden)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        logits = self.logits(hidden, low, high).float().log_softmax(dim=-1)  # (B, K)
        if uncond is not None and guidance_scale != 1.0:
            unconditional = self.logits(uncond, low, high).float().log_softmax(dim=-1)
            # Both are -inf exactly at the excluded ids, where -inf - -inf would be nan: keep -inf there.
            guided = _guide(logits, unconditional, guidance_scale)
            logits = torch.where(torch.isneginf(logits), logits, guided)
        return sample_tokens(logits, temperature, top_k=top_k, top_p=top_p, generator=generator)


# ----------------------------------------------------------------------------------------------
# Flow head: layers
# ----------------------------------------------------------------------------------------------


class TimeEmbedding(nn.Module):
    """Flow time t in [0, 1] (N,) -> (N, width): sinusoidal features, then an MLP."""

    def __init__(self, width: int, num_frequencies: int = 128, max_period: float = 10000.0):
        super().__init__()
        # Geometric frequencies from 1 to 1 / max_period, as transformer positions; t in [0, 1] is
        # scaled to [0, 1000], the range of diffusion steps these frequencies were chosen for.
        frequencies = torch.exp(-math.log(max_period) * torch.arange(num_frequencies) / num_frequencies)
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * num_frequencies, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = 1000.0 * t.float()[:, None] * self.frequencies[None]  # (N, F)
        features = torch.cat([angles.cos(), angles.sin()], dim=-1)  # (N, 2F)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class AdaLNBlock(nn.Module):
    """Residual MLP block whose LayerNorm scale/shift and residual gate come from the condition."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.modulation = nn.Linear(width, 3 * width)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.modulation(F.silu(c)).chunk(3, dim=-1)  # 3 x (N, width)
        return x + gate * self.mlp(self.norm(x) * (1 + scale) + shift)


class AdaLNOutput(nn.Module):
    """Final AdaLN then Linear(width, token_dim)."""

    def __init__(self, width: int, token_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.modulation = nn.Linear(width, 2 * width)
        self.linear = nn.Linear(width, token_dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(F.silu(c)).chunk(2, dim=-1)  # 2 x (N, width)
        return self.linear(self.norm(x) * (1 + scale) + shift)


# ----------------------------------------------------------------------------------------------
# Flow head
# ----------------------------------------------------------------------------------------------


class FlowVideoHead(nn.Module):
    """Continuous tokens (D = token_dim) from the LLM hidden state, MAR-style, one token per row.

    mode "flow": the network predicts the velocity of x_t = (1 - t) x0 + t x1 (x0 noise, x1 the
    normalised token); `repeats` noise draws per token in each loss, cheap because the head is small.
    mode "regression": the network, fed a zero token (and no time), predicts the normalised token.
    Targets are normalised per channel with `mean`/`std` buffers set from the first training batch.
    """

    def __init__(self, hidden_size: int, token_dim: int, width: int = 256, depth: int = 3, mode: str = "flow",
                 repeats: int = 4, sample_steps: int = 32):
        super().__init__()
        if mode not in FLOW_MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {list(FLOW_MODES)}")
        sizes = (("hidden_size", hidden_size, 1), ("token_dim", token_dim, 1), ("width", width, 1),
                 ("depth", depth, 0), ("repeats", repeats, 1), ("sample_steps", sample_steps, 1))
        for name, value, least in sizes:
            if value < least:
                raise ValueError(f"{name} must be >= {least}, got {value}")
        self.hidden_size, self.token_dim, self.mode = hidden_size, token_dim, mode
        self.repeats, self.sample_steps = repeats, sample_steps
        self.condition = nn.Linear(hidden_size, width)
        self.time_embedding = TimeEmbedding(width) if mode == "flow" else None  # regression has no time
        self.input = nn.Linear(token_dim, width)
        self.blocks = nn.ModuleList([AdaLNBlock(width) for _ in range(depth)])
        self.output = AdaLNOutput(width, token_dim)
        self.register_buffer("mean", torch.zeros(token_dim))
        self.register_buffer("std", torch.ones(token_dim))
        self.register_buffer("initialized", torch.tensor(False))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        # Zero modulations: every block starts as the identity and the output AdaLN as a plain
        # LayerNorm (DiT's adaLN-Zero). The output Linear keeps its default init: zeroing it too would
        # start regression mode, whose input is constant, at a stationary point (every gradient zero on
        # normalised targets), from which only rounding noise amplified by Adam escapes.
        for module in [*self.blocks, self.output]:
            nn.init.zeros_(module.modulation.weight)
            nn.init.zeros_(module.modulation.bias)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean

    def forward(self, x: torch.Tensor, t: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor:
        """The network: x (N, D), t (N,) (ignored in regression mode), hidden (N, H) -> (N, D)."""
        c = self.condition(hidden)  # (N, width)
        if self.time_embedding is not None:
            c = c + self.time_embedding(t)
        h = self.input(x)  # (N, width)
        for block in self.blocks:
            h = block(h, c)
        return self.output(h, c)

    def loss(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE of the velocity (flow) or of the normalised token (regression): (M, H), (M, D) -> ()."""
        _check_hidden(hidden, self.hidden_size)
        M, D = hidden.shape[0], self.token_dim
        if not isinstance(target, torch.Tensor) or not target.is_floating_point() or target.shape != (M, D):
            raise ValueError(f"expected float target of shape ({M}, {D}), got {_describe(target)}")
        if self.training and not bool(self.initialized):
            stats = target.detach().float()
            self.mean.copy_(stats.mean(dim=0))
            self.std.copy_(stats.std(dim=0, unbiased=False).clamp_min(1e-6))
            self.initialized.fill_(True)
        x1 = self.normalize(target)  # (M, D)
        if self.mode == "regression":
            return F.mse_loss(self(torch.zeros_like(x1), None, hidden), x1)
        x1 = x1.repeat(self.repeats, 1)  # (repeats * M, D)
        hidden = hidden.repeat(self.repeats, 1)  # (repeats * M, H)
        x0 = torch.randn_like(x1)
        t = torch.rand(x1.shape[0], device=x1.device, dtype=x1.dtype)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        return F.mse_loss(self(xt, t, hidden), x1 - x0)

    def _guided(self, x: torch.Tensor, t: torch.Tensor | None, hidden: torch.Tensor,
                uncond: torch.Tensor | None, guidance_scale: float) -> torch.Tensor:
        """The network's output, guided when uncond is given and guidance_scale != 1."""
        if uncond is None or guidance_scale == 1.0:
            return self(x, t, hidden)
        both = self(torch.cat([x, x]), None if t is None else torch.cat([t, t]), torch.cat([hidden, uncond]))
        cond, unconditional = both.chunk(2)
        return _guide(cond, unconditional, guidance_scale)

    @torch.no_grad()
    def sample(self, hidden: torch.Tensor, uncond: torch.Tensor | None = None, guidance_scale: float = 1.0,
               steps: int | None = None, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """One token per row of hidden (B, H) -> (B, D), denormalised.

        Flow: x0 = temperature * noise, `steps` Euler steps from t = 0 to 1. Regression: the
        prediction (no noise; steps, temperature and generator are unused).
        """
        _check_hidden(hidden, self.hidden_size)
        _check_uncond(uncond, hidden)
        B, D = hidden.shape[0], self.token_dim
        if self.mode == "regression":
            x = hidden.new_zeros(B, D)
            return self.denormalize(self._guided(x, None, hidden, uncond, guidance_scale))
        steps = self.sample_steps if steps is None else steps
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        x = temperature * torch.randn(B, D, generator=generator, device=hidden.device, dtype=hidden.dtype)
        for i in range(steps):
            t = hidden.new_full((B,), i / steps)
            x = x + self._guided(x, t, hidden, uncond, guidance_scale) / steps
        return self.denormalize(x)


# ----------------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------------


def build_generation_head(kind: str, hidden_size: int, token_dim: int | None = None,
                          codebook_size: int | None = None, **kwargs) -> nn.Module:
    """A head by kind: "discrete" (needs codebook_size), "flow" or "regression" (need token_dim).

    kwargs go to FlowVideoHead (width, depth, repeats, sample_steps).
    """
    if kind not in GENERATION_HEADS:
        raise ValueError(f"unknown generation head {kind!r}; known: {list(GENERATION_HEADS)}")
    if kind == "discrete":
        if codebook_size is None:
            raise ValueError("a discrete generation head needs codebook_size")
        return DiscreteVideoHead(hidden_size, codebook_size, **kwargs)
    if token_dim is None:
        raise ValueError(f"a {kind} generation head needs token_dim")
    return FlowVideoHead(hidden_size, token_dim, mode=kind, **kwargs)
