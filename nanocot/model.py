"""A minimal GPT: token + learned position embeddings, pre-norm blocks, tied unembedding.

- Attention has two paths that compute the same thing: `reference` (explicit q·k, causal mask, softmax:
  read this one to see the math) and `fused` (`F.scaled_dot_product_attention`: the fast one). A test
  proves they agree.
- A preallocated `KVCache` lets generation feed one new token per step instead of the whole prefix; a test
  proves cached decoding equals full recomputation.
- `forward(..., record=True)` also returns every layer's residual stream and attention pattern, the seam
  through which evaluation reads the model's internals (probes, attention maps) without touching it.
- Weights are named as in the interpretability literature: `W_E` embeds tokens, `W_pos` positions, and the
  unembedding is `W_E` transposed (tied).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from nanocot.config import ModelConfig


class KVCache:
    """Keys and values of every layer for the tokens fed so far, preallocated to `max_len`. Left
    uninitialised (`empty`, not `zeros`): attention reads only the first `pos` positions, each written
    before it is read, and zeroing the RL batch's cache was 3% of a decode."""

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, device, dtype=torch.float32):
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.d_model // config.n_head)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self.pos = 0  # number of tokens already cached (the same for every row)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this layer's new keys/values (B, nh, T, hs); return all cached so far, (B, nh, pos+T, hs)."""
        T = k.shape[2]
        self.k[layer, :, :, self.pos : self.pos + T] = k
        self.v[layer, :, :, self.pos : self.pos + T] = v
        return self.k[layer, :, :, : self.pos + T], self.v[layer, :, :, : self.pos + T]

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (e.g. the ones still generating), in this order."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        assert config.d_model % config.n_head == 0, "d_model must be a multiple of n_head"
        self.n_head, self.layer, self.impl = config.n_head, layer, config.attn_impl
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)

    def forward(self, x: torch.Tensor, cache: KVCache | None, record: dict | None) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # (B, T, d) each
        q, k, v = (rearrange(t, "b t (nh hs) -> b nh t hs", nh=self.n_head) for t in (q, k, v))
        offset = 0
        if cache is not None:
            offset = cache.pos
            k, v = cache.append(self.layer, k, v)  # (B, nh, offset+T, hs)
        T, S = q.shape[2], k.shape[2]
        if self.impl == "reference" or record is not None:
            y = self._reference(q, k, v, offset, record)
        elif offset == 0:  # training, or the first (prefill) step of generation: plain causal
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif T == 1:  # one new token may look at every cached one
            y = F.scaled_dot_product_attention(q, k, v)
        else:  # several new tokens after a cached prefix: causal with an offset
            mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=offset)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(rearrange(y, "b nh t hs -> b t (nh hs)"))

    def _reference(self, q, k, v, offset: int, record: dict | None) -> torch.Tensor:
        T, S = q.shape[2], k.shape[2]
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, nh, T, S)
        allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=offset)
        scores = scores.masked_fill(~allowed, float("-inf"))  # query i sees keys 0..offset+i only
        pattern = scores.softmax(dim=-1)
        if record is not None:
            record.setdefault("attn", []).append(pattern.detach())
        return pattern @ v  # (B, nh, T, hs)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up = nn.Linear(config.d_model, config.d_mlp)
        self.down = nn.Linear(config.d_mlp, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_mlp = nn.LayerNorm(config.d_model)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, record=None):
        x = x + self.attn(self.ln_attn(x), cache, record)
        return x + self.mlp(self.ln_mlp(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set from the tokenizer")
        if config.attn_impl not in ("fused", "reference"):
            raise ValueError(f"attn_impl must be 'fused' or 'reference', got {config.attn_impl!r}")
        self.config = config
        self.W_E = nn.Embedding(config.vocab_size, config.d_model)
        self.W_pos = nn.Embedding(config.block_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_final = nn.LayerNorm(config.d_model)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: shrink residual writes so depth keeps variance
            if name.endswith(("proj.weight", "down.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - (self.W_E.weight.numel() + self.W_pos.weight.numel() if non_embedding else 0)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, record: bool = False):
        """idx (B, T) token ids -> logits (B, T, vocab). With a cache, idx holds only the new tokens.
        With record=True, also returns {"resid": [(B, T, d)] * (n_layer + 1), "attn": [(B, nh, T, S)]}."""
        x, acts = self.features(idx, cache, record)
        logits = self.unembed(x)
        return (logits, acts) if record else logits

    def logits_at(self, idx: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Logits (N, vocab) at the N positions where `keep` (B, T) is True: a loss that reads a few positions
        pays for the unembedding and its softmax only there (nanocot/fast/cpu.py)."""
        return self.unembed(self.features(idx)[0][keep])

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        """Final residual stream (..., d) -> logits (..., vocab): the tied unembedding."""
        return self.ln_final(x) @ self.W_E.weight.T

    def features(self, idx: torch.Tensor, cache: KVCache | None = None, record: bool = False):
        """The final residual stream (B, T, d) before the unembedding, and the recorded activations (or
        None). Split from `forward` so a loss on a few positions can unembed only those (`logits_at`)."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        positions = torch.arange(start, start + T, device=idx.device)
        x = self.W_E(idx) + self.W_pos(positions)  # (B, T, d)
        acts = {"resid": [x.detach()]} if record else None
        for block in self.blocks:
            x = block(x, cache, acts)
            if record:
                acts["resid"].append(x.detach())
        if cache is not None:
            cache.pos += T
        return x, acts

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward): 6 per weight used in a matmul (the tied W_E
        counts once, as the unembedding; W_pos is a lookup), plus attention's q·k and pattern·v
        (2 matmuls of d x S, 2 FLOPs per multiply-add, x3 for backward) at the causal mean S = T/2."""
        c = self.config
        return 6 * (self.num_params() - self.W_pos.weight.numel()) + 6 * c.n_layer * c.d_model * seq_len
