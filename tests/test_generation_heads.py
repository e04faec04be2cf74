"""Generation heads: training on one batch, sampling, guidance, ranges, normalisation, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch

from mmvid.generation import filter_logits
from mmvid.generation_heads import DiscreteVideoHead, FlowVideoHead, build_generation_head

HIDDEN, TOKEN_DIM, CODEBOOK, BATCH = 16, 4, 10, 16
TINY = dict(width=32, depth=2)  # FlowVideoHead size for the tests

pytestmark = pytest.mark.usefixtures("one_thread")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def batch():
    """16 hidden states and targets that are a fixed function of them: ids (argmax of a linear map,
    so a Linear head can fit them) and continuous tokens (off zero mean and unit scale)."""
    g = _generator(0)
    hidden = torch.randn(BATCH, HIDDEN, generator=g)
    ids = (hidden @ torch.randn(HIDDEN, CODEBOOK, generator=g)).argmax(dim=-1)
    tokens = 3 * torch.tanh(hidden @ torch.randn(HIDDEN, TOKEN_DIM, generator=g) / 2) + 1
    return hidden, ids, tokens


def _train(kind: str, batch, steps: int = 200) -> tuple[torch.nn.Module, list[float]]:
    hidden, ids, tokens = batch
    torch.manual_seed(0)
    kwargs = {} if kind == "discrete" else TINY
    head = build_generation_head(kind, HIDDEN, token_dim=TOKEN_DIM, codebook_size=CODEBOOK, **kwargs)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = head.loss(hidden, ids if kind == "discrete" else tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return head.eval(), losses


@pytest.fixture(scope="module")
def trained(batch, one_thread):
    """Each kind trained for 200 Adam steps on the batch: {kind: (head, losses)}."""
    return {kind: _train(kind, batch) for kind in ("discrete", "flow", "regression")}


# ---------------------------------------------------------------- training on one batch


@pytest.mark.parametrize("kind", ["discrete", "flow", "regression"])
def test_loss_goes_down(trained, kind):
    _, losses = trained[kind]
    first, last = losses[0], sum(losses[-10:]) / 10  # the flow loss is noisy: average its end
    assert math.isfinite(first) and last < 0.5 * first, (first, last)


def test_regression_head_has_gradients_at_init(batch):
    # Its input is a constant zero token, so the hidden state reaches the output only through the
    # zero-initialised modulations; they must still get a gradient (SGD would never leave a saddle).
    hidden, _, tokens = batch
    torch.manual_seed(0)
    head = FlowVideoHead(HIDDEN, TOKEN_DIM, mode="regression", **TINY)
    head.loss(hidden, tokens).backward()
    assert head.output.modulation.weight.grad.abs().max() > 1e-3


def test_discrete_greedy_recovers_targets(trained, batch):
    head, _ = trained["discrete"]
    hidden, ids, _ = batch
    assert torch.equal(head.sample(hidden, temperature=0.0), ids)


@pytest.mark.parametrize("kind", ["flow", "regression"])
def test_continuous_samples_near_their_targets(trained, batch, kind):
    head, _ = trained[kind]
    hidden, _, tokens = batch
    samples = head.sample(hidden, steps=32, generator=_generator(1))
    own = (samples - tokens).norm(dim=-1)
    other = (samples - tokens.roll(1, dims=0)).norm(dim=-1)  # another row's target
    assert own.mean() < 0.25 * other.mean(), (own.mean(), other.mean())
    assert (own < other).float().mean() >= 0.9


# ---------------------------------------------------------------- guidance


def test_discrete_guidance_one_is_unguided():
    torch.manual_seed(0)
    head = DiscreteVideoHead(HIDDEN, CODEBOOK)  # untrained: random weights, so the condition matters
    hidden = torch.randn(64, HIDDEN, generator=_generator(2))
    uncond = torch.randn(64, HIDDEN, generator=_generator(3))
    plain = head.sample(hidden, generator=_generator(4))
    assert torch.equal(head.sample(hidden, uncond=uncond, guidance_scale=1.0, generator=_generator(4)), plain)
    greedy = head.sample(hidden, temperature=0.0)
    assert not torch.equal(head.sample(hidden, uncond=uncond, guidance_scale=4.0, temperature=0.0), greedy)
    guided = head.sample(hidden, uncond=uncond, guidance_scale=4.0, generator=_generator(4))
    assert not torch.equal(guided, plain)


@pytest.mark.parametrize("kind", ["flow", "regression"])
def test_continuous_guidance_one_is_unguided(trained, batch, kind):
    head, _ = trained[kind]
    hidden = batch[0]
    uncond = torch.zeros_like(hidden)
    plain = head.sample(hidden, generator=_generator(5))
    assert torch.equal(head.sample(hidden, uncond=uncond, guidance_scale=1.0, generator=_generator(5)), plain)
    guided = head.sample(hidden, uncond=uncond, guidance_scale=3.0, generator=_generator(5))
    assert not torch.allclose(guided, plain)


# ---------------------------------------------------------------- discrete ranges


def test_discrete_samples_stay_in_range():
    torch.manual_seed(0)
    head = DiscreteVideoHead(HIDDEN, CODEBOOK)
    hidden = torch.randn(256, HIDDEN, generator=_generator(6))
    uncond = torch.randn(256, HIDDEN, generator=_generator(7))
    low = torch.randint(0, CODEBOOK - 1, (256,), generator=_generator(8))
    high = (low + torch.randint(1, 4, (256,), generator=_generator(9))).clamp(max=CODEBOOK)  # 1 to 3 ids each
    g = _generator(10)
    seen = set()
    for guidance_scale in (1.0, 3.0):
        for _ in range(4):
            free = head.sample(hidden, temperature=2.0, generator=g)
            assert free.dtype == torch.long and free.shape == (256,)
            assert int(free.min()) >= 0 and int(free.max()) < CODEBOOK
            seen.update(free.tolist())
            ids = head.sample(hidden, uncond=uncond, guidance_scale=guidance_scale, temperature=2.0, top_k=3,
                              low=low, high=high, generator=g)
            assert bool(((ids >= low) & (ids < high)).all())
    assert len(seen) == CODEBOOK  # temperature 2 really spreads over the codebook
    logits = head.logits(hidden, low=low, high=high)
    ids = torch.arange(CODEBOOK)
    assert torch.equal(torch.isneginf(logits), (ids < low[:, None]) | (ids >= high[:, None]))


def test_filter_logits_keeps_expected_sets():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]])  # second row: reversed
    logits = probs.log()

    def kept(top_k=0, top_p=1.0):
        return [torch.isfinite(row).nonzero()[:, 0].tolist() for row in filter_logits(logits, top_k, top_p)]

    assert torch.equal(filter_logits(logits), logits)
    assert kept(top_k=1) == [[0], [3]]
    assert kept(top_k=2) == [[0, 1], [2, 3]]
    assert kept(top_k=10) == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert kept(top_p=0.1) == [[0], [3]]  # the argmax is always kept
    assert kept(top_p=0.7) == [[0, 1], [2, 3]]  # 0.5 < 0.7, 0.5 + 0.3 reaches it
    assert kept(top_p=0.85) == [[0, 1, 2], [1, 2, 3]]
    assert kept(top_k=3, top_p=0.6) == [[0, 1], [2, 3]]  # top-p on the renormalised top 3: 0.53, 0.32, 0.16
    kept_values = filter_logits(logits, top_k=2)
    assert torch.equal(kept_values[0, :2], logits[0, :2])  # kept logits are unchanged


# ---------------------------------------------------------------- flow sampler and normalisation


def test_flow_sampler_seeded_and_regression_ignores_seed(trained, batch):
    hidden = batch[0]
    flow, _ = trained["flow"]
    a = flow.sample(hidden, steps=4, generator=_generator(11))
    assert torch.equal(a, flow.sample(hidden, steps=4, generator=_generator(11)))
    assert not torch.allclose(a, flow.sample(hidden, steps=4, generator=_generator(12)))
    regression, _ = trained["regression"]
    assert torch.equal(regression.sample(hidden, generator=_generator(11)),
                       regression.sample(hidden, generator=_generator(12)))


def test_normalisation_set_on_first_training_loss(batch):
    hidden, _, tokens = batch
    torch.manual_seed(0)
    head = FlowVideoHead(HIDDEN, TOKEN_DIM, **TINY)
    before_init = head.sample(hidden, steps=2, generator=_generator(0))  # works, with mean 0 and std 1
    assert before_init.shape == (BATCH, TOKEN_DIM)
    head.eval()
    head.loss(hidden, tokens)  # eval mode: statistics untouched
    assert not bool(head.initialized) and torch.equal(head.std, torch.ones(TOKEN_DIM))
    head.train()
    head.loss(hidden, tokens)
    assert bool(head.initialized)
    torch.testing.assert_close(head.mean, tokens.mean(dim=0))
    torch.testing.assert_close(head.std, tokens.std(dim=0, unbiased=False))
    torch.testing.assert_close(head.normalize(tokens).mean(dim=0), torch.zeros(TOKEN_DIM), atol=1e-5, rtol=0)
    torch.testing.assert_close(head.denormalize(head.normalize(tokens)), tokens)
    head.loss(hidden, 10 * tokens)  # later batches do not move them
    torch.testing.assert_close(head.mean, tokens.mean(dim=0))


def test_state_dict_round_trip(trained, batch):
    head, _ = trained["flow"]
    assert {"mean", "std", "initialized"} <= set(head.state_dict())
    torch.manual_seed(1)
    fresh = FlowVideoHead(HIDDEN, TOKEN_DIM, **TINY)
    fresh.load_state_dict(head.state_dict())
    fresh.eval()
    assert bool(fresh.initialized) and torch.equal(fresh.mean, head.mean) and torch.equal(fresh.std, head.std)
    hidden = batch[0]
    assert torch.equal(fresh.sample(hidden, steps=8, generator=_generator(13)),
                       head.sample(hidden, steps=8, generator=_generator(13)))
    fresh.train()
    fresh.loss(hidden, batch[2] + 5)  # loaded statistics are kept, not re-estimated
    assert torch.equal(fresh.mean, head.mean)


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs_raise(batch):
    hidden, ids, tokens = batch
    discrete = DiscreteVideoHead(HIDDEN, CODEBOOK)
    flow = FlowVideoHead(HIDDEN, TOKEN_DIM, **TINY)
    wrong = torch.randn(BATCH, HIDDEN + 1)
    message = rf"expected hidden of shape \(B, {HIDDEN}\), got \({BATCH}, {HIDDEN + 1}\)"
    for call in (lambda: discrete.sample(wrong), lambda: discrete.loss(wrong, ids),
                 lambda: flow.sample(wrong), lambda: flow.loss(wrong, tokens)):
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(ValueError, match=r"expected float target of shape \(16, 4\), got .*\(16, 3\)"):
        flow.loss(hidden, tokens[:, :3])
    with pytest.raises(ValueError, match="expected uncond of the same shape"):
        flow.sample(hidden, uncond=hidden[:3])
    with pytest.raises(ValueError, match=r"target ids must be in \[0, 10\)"):
        discrete.loss(hidden, ids.clone().fill_(CODEBOOK))
    with pytest.raises(ValueError, match=r"outside their \[low, high\) range"):
        discrete.loss(hidden, torch.zeros(BATCH, dtype=torch.long), low=torch.ones(BATCH, dtype=torch.long))
    with pytest.raises(ValueError, match="need 0 <= low < high"):
        discrete.sample(hidden, low=3, high=3)
    known = r"known: \['discrete', 'flow', 'regression'\]"
    with pytest.raises(ValueError, match=rf"unknown generation head 'diffusion'; {known}"):
        build_generation_head("diffusion", HIDDEN, token_dim=TOKEN_DIM)
    with pytest.raises(ValueError, match="needs codebook_size"):
        build_generation_head("discrete", HIDDEN)
    with pytest.raises(ValueError, match="needs token_dim"):
        build_generation_head("flow", HIDDEN)
    with pytest.raises(ValueError, match=r"unknown mode 'diffusion'; known: \['flow', 'regression'\]"):
        FlowVideoHead(HIDDEN, TOKEN_DIM, mode="diffusion")
    logits = torch.randn(2, 5)
    for top_p in (0.0, 1.5):
        with pytest.raises(ValueError, match="top_p must be in"):
            filter_logits(logits, top_p=top_p)
    with pytest.raises(ValueError, match="top_k must be"):
        filter_logits(logits, top_k=-1)
