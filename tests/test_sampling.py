"""Batched generation: cache == no cache, log-probs are the model's, stop/mask semantics, prompt order."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from conftest import make_model

from nanocot.fast.cpu import sample_categorical
from nanocot.fast.ragged import generate_ragged
from nanocot.sampling import generate

V, PAD, STOP = 6, 0, 1  # a 6-token vocabulary: a random model hits the stop token often
PROMPTS = [[2, 3, 4, 5, 2], [3, 4, 2], [5, 5, 5, 4, 3], [2, 2, 3, 4], [4, 3, 2], [2], [3, 3, 3, 3, 3, 3, 3]]


@pytest.fixture(scope="module")
def model():
    return make_model(V, std=0.4, n_layer=2)


def _sample(model, seed=0, use_cache=True, **kwargs):
    kwargs.setdefault("max_new_tokens", 12)
    return generate(model, PROMPTS, stop_id=STOP, pad_id=PAD, generator=torch.Generator().manual_seed(seed),
                    use_cache=use_cache, **kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"temperature": 0.7, "top_k": 3}, {"greedy": True}])
def test_cache_equals_no_cache(model, kwargs):
    """The fast cached path must draw exactly what full recomputation draws under the same seed."""
    a = _sample(model, use_cache=True, **kwargs)
    b = _sample(model, use_cache=False, **kwargs)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.equal(a.mask, b.mask)
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_dropping_stopped_rows_changes_no_row(model):
    """Rows that stopped are dropped from the batch (and the cache) as it decodes; every row must still get
    exactly what it gets when decoded alone, where nothing is ever dropped."""
    prompts = [list(p) for p in itertools.product([2, 3, 4, 5], repeat=3)]  # one length: one batch of 64
    together = generate(model, prompts, 12, STOP, PAD, greedy=True)
    assert len(set(together.lengths())) > 2, "the test needs rows stopping at different steps"
    for i, p in enumerate(prompts):
        alone = generate(model, [p], 12, STOP, PAD, greedy=True)
        n = alone.lengths()[0]
        assert together.lengths()[i] == n
        assert torch.equal(together.tokens[i, :n], alone.tokens[0, :n])
        assert torch.allclose(together.logprobs[i, :n], alone.logprobs[0, :n], atol=1e-5)


@pytest.mark.parametrize("max_new", [3, 12])
def test_ragged_generation_equals_generation_by_length(model, max_new):
    """All prompt lengths in one right-padded batch, recomputed per token, decode exactly what `generate`'s
    one-batch-per-length cached decoding does (greedy); sampled log-probs are the model's."""
    a = generate(model, PROMPTS, max_new, STOP, PAD, greedy=True)
    b = generate_ragged(model, PROMPTS, max_new, STOP, PAD, greedy=True)
    width = max(a.tokens.shape[1], b.tokens.shape[1])
    pad = lambda t: F.pad(t, (0, width - t.shape[1]))
    assert torch.equal(pad(a.tokens), pad(b.tokens)) and torch.equal(pad(a.mask), pad(b.mask))
    assert torch.allclose(pad(a.logprobs), pad(b.logprobs), atol=1e-5)
    s = generate_ragged(model, PROMPTS, max_new, STOP, PAD, temperature=0.7,
                        generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for i, p in enumerate(PROMPTS):
            n = s.lengths()[i]
            full = F.log_softmax(model(torch.tensor([p + s.tokens[i, :n].tolist()])), dim=-1)[0]
            want = full[len(p) - 1 : len(p) - 1 + n].gather(1, s.tokens[i, :n, None]).squeeze(1)
            assert torch.allclose(s.logprobs[i, :n], want, atol=1e-5)


def test_ragged_generation_stops_at_the_context_end(model):
    """A prompt one token short of the context gets exactly one new token, whatever the budget."""
    long = [2] * (model.config.block_size - 1)
    s = generate_ragged(model, [long, [3, 4]], 5, STOP, PAD, greedy=True)
    assert s.lengths()[0] == 1


def test_seed_controls_sampling(model):
    assert torch.equal(_sample(model, seed=3).tokens, _sample(model, seed=3).tokens)
    assert not torch.equal(_sample(model, seed=3).tokens, _sample(model, seed=4).tokens)


@torch.no_grad()
@pytest.mark.parametrize("kwargs", [{}, {"temperature": 2.0, "top_k": 2}])
def test_logprobs_are_the_models(model, kwargs):
    """REINFORCE differentiates these: they must be log_softmax of the model (temperature 1, no top-k) at
    the sampled tokens, as one full forward pass over prompt + completion computes them."""
    s = _sample(model, **kwargs)
    for i, p in enumerate(PROMPTS):
        n = int(s.mask[i].sum())
        generated = s.tokens[i, :n].tolist()
        logp = F.log_softmax(model(torch.tensor([p + generated])), dim=-1)[0]
        expected = logp[len(p) - 1 : len(p) - 1 + n].gather(1, torch.tensor(generated)[:, None]).squeeze(1)
        assert torch.allclose(s.logprobs[i, :n], expected, atol=1e-5)
        assert torch.all(s.logprobs[i, n:] == 0)


def test_mask_stops_at_first_stop_token(model):
    """The mask is 1 up to and including the first stop token, 0 after; later positions are padding."""
    stopped = unstopped = 0
    for seed in range(4):
        s = _sample(model, seed=seed)
        T = s.tokens.shape[1]
        for i in range(len(PROMPTS)):
            row = s.tokens[i].tolist()
            n = int(s.mask[i].sum())
            assert s.lengths()[i] == n
            assert torch.all(s.mask[i, :n] == 1) and torch.all(s.mask[i, n:] == 0)
            if STOP in row[:n]:
                assert row.index(STOP) == n - 1, "the mask must end exactly at the first stop token"
                stopped += 1
            else:
                assert n == T == 12, "a row without a stop token runs to max_new_tokens"
                unstopped += 1
            assert all(t == PAD for t in row[n:])
    assert stopped > 0 and unstopped > 0, "the test must exercise both stopped and unstopped rows"


def test_rows_come_back_in_prompt_order(model):
    """Prompts are grouped by length internally; row i must still answer prompt i."""
    batch = _sample(model, greedy=True)
    for i, p in enumerate(PROMPTS):
        alone = generate(model, [p], 12, stop_id=STOP, pad_id=PAD, greedy=True)
        n = int(alone.mask[0].sum())
        assert int(batch.mask[i].sum()) == n
        assert torch.equal(batch.tokens[i, :n], alone.tokens[0, :n])


@torch.no_grad()
def test_greedy_is_deterministic_argmax(model):
    a = _sample(model, seed=0, greedy=True)
    b = _sample(model, seed=99, greedy=True)
    assert torch.equal(a.tokens, b.tokens)
    p = PROMPTS[0]
    first = model(torch.tensor([p]))[0, -1].argmax().item()
    assert a.tokens[0, 0].item() == first


def test_generation_respects_block_size(model):
    """A prompt near block_size gets only the room that is left instead of crashing."""
    bs = model.config.block_size
    s = generate(model, [[2] * (bs - 3)], 10, stop_id=V + 100, pad_id=PAD)  # unreachable stop id
    assert s.tokens.shape == (1, 10)
    assert int(s.mask.sum()) == 3


def test_overlong_prompt_raises_value_error(model):
    bs = model.config.block_size
    with pytest.raises(ValueError):
        generate(model, [[2] * (bs + 5)], 10, stop_id=STOP, pad_id=PAD)


def test_sample_categorical_matches_the_distribution_and_never_draws_zero_mass():
    """The inverse-CDF sampler (the fast path beside torch.multinomial) draws each token at its probability,
    and never a token of probability 0 (what top-k masks), even when the uniform draw is 0."""
    probs = torch.tensor([[0.0, 0.2, 0.0, 0.8]]).repeat(100_000, 1)
    draws = sample_categorical(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert freq[0] == 0 and freq[2] == 0
    assert abs(freq[1].item() - 0.2) < 0.01 and abs(freq[3].item() - 0.8) < 0.01
    zero_u = torch.Generator()
    zero_u.manual_seed(0)
    assert sample_categorical(torch.tensor([[0.0, 0.0, 1.0]]), zero_u).item() == 2
