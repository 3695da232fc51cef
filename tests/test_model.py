"""The GPT: causality, the two attention paths agree, the KV cache equals recomputation, record=True."""

from dataclasses import replace

import pytest
import torch
from conftest import make_model

from nanocot.config import model_config
from nanocot.model import GPT, KVCache

V = 30  # a small vocabulary keeps these tests fast; the tokenizer plays no role here


def _tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def _twin(model: GPT, **overrides) -> GPT:
    """The same weights under another config (e.g. the other attention implementation)."""
    twin = GPT(replace(model.config, **overrides))
    twin.load_state_dict(model.state_dict())
    return twin.eval()


@pytest.mark.parametrize("impl", ["fused", "reference"])
@torch.no_grad()
def test_causal_masking(impl):
    """Changing token t must not change any logit before t: otherwise training leaks the answer."""
    model = make_model(V, attn_impl=impl, n_layer=2)
    x = _tokens(2, 20)
    y = x.clone()
    y[:, 10] = (y[:, 10] + 1) % V
    a, b = model(x), model(y)
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:]), "the change must be visible from position 10 on"


@pytest.mark.parametrize("n_layer", [1, 2])
@torch.no_grad()
def test_reference_attention_equals_fused(n_layer):
    """The readable path and the fast path must compute the same function."""
    fused = make_model(V, n_layer=n_layer)
    reference = _twin(fused, attn_impl="reference")
    x = _tokens(3, 40)
    a, b = fused(x), reference(x)
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert a.abs().max() > 1.0, "weights should be large enough that a mistake is visible"


@pytest.mark.parametrize("impl", ["fused", "reference"])
@torch.no_grad()
def test_kv_cache_equals_full_recomputation(impl):
    """Generation feeds tokens through the cache; it must give exactly the logits of a full forward pass."""
    model = make_model(V, attn_impl=impl, n_layer=2)
    x = _tokens(3, 24, seed=1)
    full = model(x)
    cache = KVCache(model.config, batch_size=3, max_len=24, device="cpu")
    pieces = [model(x[:, :8], cache)]  # prefill
    for t in range(8, 14):  # one token at a time
        pieces.append(model(x[:, t : t + 1], cache))
    pieces.append(model(x[:, 14:19], cache))  # several tokens at once after a cached prefix
    pieces.append(model(x[:, 19:24], cache))
    assert cache.pos == 24
    cached = torch.cat(pieces, dim=1)
    assert cached.shape == full.shape
    assert torch.allclose(cached, full, atol=1e-5), (cached - full).abs().max()


@torch.no_grad()
def test_kv_cache_overflow_raises():
    model = make_model(V)
    bs = model.config.block_size
    cache = KVCache(model.config, batch_size=1, max_len=bs, device="cpu")
    model(_tokens(1, bs - 2), cache)
    with pytest.raises(ValueError, match="block_size"):
        model(_tokens(1, 3), cache)


@pytest.mark.parametrize("n_layer", [1, 2])
@torch.no_grad()
def test_record_returns_residuals_and_attention(n_layer):
    """Probes and attention maps read the model through record=True; shapes and semantics must hold."""
    model = make_model(V, n_layer=n_layer)
    c = model.config
    B, T = 2, 17
    x = _tokens(B, T)
    logits, acts = model(x, record=True)
    assert torch.allclose(logits, model(x), atol=1e-5), "recording must not change the output"
    assert len(acts["resid"]) == n_layer + 1
    assert all(r.shape == (B, T, c.d_model) for r in acts["resid"])
    assert torch.allclose(acts["resid"][0], model.W_E(x) + model.W_pos(torch.arange(T)))
    assert torch.allclose(model.ln_final(acts["resid"][-1]) @ model.W_E.weight.T, logits, atol=1e-5)
    assert len(acts["attn"]) == n_layer
    for pattern in acts["attn"]:
        assert pattern.shape == (B, c.n_head, T, T)
        assert torch.allclose(pattern.sum(-1), torch.ones(B, c.n_head, T), atol=1e-5)
        assert torch.all(pattern.triu(diagonal=1) == 0)
        assert torch.all(pattern >= 0)


@torch.no_grad()
def test_record_with_cache_has_offset_patterns():
    """With a cache, a recorded pattern covers every cached key and is causal with the right offset."""
    model = make_model(V)
    x = _tokens(1, 12)
    _, full = model(x, record=True)
    cache = KVCache(model.config, 1, 12, "cpu")
    model(x[:, :7], cache)
    _, acts = model(x[:, 7:], cache, record=True)
    pattern = acts["attn"][0]
    assert pattern.shape == (1, model.config.n_head, 5, 12)
    assert torch.allclose(pattern, full["attn"][0][:, :, 7:], atol=1e-5)


@torch.no_grad()
def test_block_size_overflow_raises():
    model = make_model(V)
    bs = model.config.block_size
    model(_tokens(1, bs))  # exactly block_size is fine
    with pytest.raises(ValueError, match="block_size"):
        model(_tokens(1, bs + 1))


def test_config_errors():
    with pytest.raises(ValueError):
        GPT(model_config("tiny", 0))
    with pytest.raises(ValueError):
        GPT(replace(model_config("tiny", V), attn_impl="flash"))
    with pytest.raises(ValueError, match="unknown size"):
        model_config("huge", V)


def test_tied_unembedding_and_param_count():
    """The unembedding is W_E transposed: no separate output matrix exists."""
    model = GPT(model_config("tiny", V))
    c = model.config
    assert not any(p.shape == (V, c.d_model) for n, p in model.named_parameters() if n != "W_E.weight")
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    assert (model.num_params(non_embedding=True)
            == model.num_params() - V * c.d_model - c.block_size * c.d_model)
