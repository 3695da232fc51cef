"""Batched generation with a KV cache, for RL and evaluation alike.

- Prompts of different lengths are grouped by length, so rows of one group share positions and need no
  padding or attention masks (learned absolute positions would shift under left-padding).
- One forward pass per new token: the prompt is fed once (prefill), then each step feeds only the token
  just sampled; `use_cache=False` recomputes the whole prefix instead (slow; kept to test the cache and as
  bench/run.py's baseline, so it unembeds only the last position, as a sensible uncached sampler would).
- Each row stops at its first newline; its later positions are padding with mask 0. Once half the rows of a
  batch have stopped, they are dropped from it (cache included): one rambling row no longer keeps all the
  others decoding to `max_new_tokens` (in RL about one step in three has such a row).
- Returned log-probs are the *model's* (temperature 1, no top-k) log-probabilities of the sampled tokens,
  the quantity REINFORCE differentiates; temperature and top-k only shape which tokens are drawn.
- Seeded by a `torch.Generator`, so a run is reproducible and cached and uncached sampling draw alike.
- On CUDA, a batch shape decoded twice before is decoded by replaying recorded CUDA graphs
  (`cuda_graphs.decoder`): greedy results are the same; sampled ones use uniforms drawn in one call.
"""

from collections import defaultdict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nanocot import cuda_graphs
from nanocot.model import GPT, KVCache


@dataclass
class Samples:
    tokens: torch.Tensor  # (N, T) generated token ids, padded with pad_id after each row's stop
    logprobs: torch.Tensor  # (N, T) model log-prob of each generated token (0 where mask is 0)
    mask: torch.Tensor  # (N, T) 1.0 on generated tokens up to and including the stop token

    def lengths(self) -> list[int]:
        return self.mask.sum(1).long().tolist()


@torch.no_grad()
def generate(
    model: GPT,
    prompts: list[list[int]],
    max_new_tokens: int,
    stop_id: int,
    pad_id: int = 0,
    temperature: float = 1.0,
    top_k: int | None = None,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> Samples:
    """Continue each prompt until its first `stop_id` or `max_new_tokens`; returns rows in prompt order."""
    device = next(model.parameters()).device
    N = len(prompts)
    tokens = torch.full((N, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((N, max_new_tokens), device=device)
    mask = torch.zeros((N, max_new_tokens), device=device)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        if not 0 < len(p) < model.config.block_size:
            raise ValueError(f"prompt {i} has {len(p)} tokens; it must have 1..{model.config.block_size - 1}")
        groups[len(p)].append(i)
    for length, rows in groups.items():
        budget = min(max_new_tokens, model.config.block_size - length)
        t, lp, m = _generate_group(model, torch.tensor([prompts[i] for i in rows], device=device), budget,
                                   stop_id, pad_id, temperature, top_k, greedy, generator, use_cache)
        index = torch.tensor(rows, device=device)
        tokens[index, : t.shape[1]], logprobs[index, : t.shape[1]], mask[index, : t.shape[1]] = t, lp, m
    return Samples(tokens, logprobs, mask)


@torch.no_grad()
def generate_ragged(model: GPT, prompts: list[list[int]], max_new_tokens: int, stop_id: int, pad_id: int = 0,
                    temperature: float = 1.0, top_k: int | None = None, greedy: bool = False,
                    generator: torch.Generator | None = None) -> Samples:
    """`generate` for a few new tokens after prompts of many lengths (RL's answers after paraphrased traces):
    every row in one right-padded batch, the prefix recomputed for each new token, where `generate` would run
    one small batch per prompt length. Right padding changes nothing: attention is causal and every row starts
    at position 0. A row also stops when it reaches the context's end."""
    device = next(model.parameters()).device
    N, block = len(prompts), model.config.block_size
    lengths = [len(p) for p in prompts]
    if not all(0 < n < block for n in lengths):
        raise ValueError(f"prompts must have 1..{block - 1} tokens")
    width = min(block, max(lengths) + max_new_tokens)
    x = torch.tensor([p + [pad_id] * (width - len(p)) for p in prompts], device=device)  # one copy to the device
    tokens = torch.full((N, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((N, max_new_tokens), device=device)
    mask = torch.zeros((N, max_new_tokens), device=device)
    rows = torch.arange(N, device=device)
    end = torch.tensor(lengths, device=device)  # where each row's next token goes
    alive = torch.ones(N, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        features = model.features(x[:, : int(end.max())])[0]  # (N, T, d)
        logits = model.unembed(features[rows, end - 1])  # (N, V): unembedded at each row's last real position only
        next_id, next_lp = choose_next(logits, temperature, top_k, greedy, generator)
        tokens[:, step] = torch.where(alive, next_id, pad_id)
        logprobs[:, step] = torch.where(alive, next_lp, 0.0)
        mask[:, step] = alive.float()
        alive = alive & (next_id != stop_id) & (end + 1 < block)
        if not alive.any():
            return Samples(tokens[:, : step + 1], logprobs[:, : step + 1], mask[:, : step + 1])
        x[rows[alive], end[alive]] = next_id[alive]
        end = end + alive.long()
    return Samples(tokens, logprobs, mask)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None,
                       uniform: torch.Tensor | None = None) -> torch.Tensor:
    """One draw per row of probs (N, V) by inverting the CDF: the first token whose cumulative mass exceeds
    a uniform draw. Same distribution as torch.multinomial(probs, 1), ~10x faster on CPU at the RL batch
    (bench/run.py); `right=True` means a zero-probability token (top-k) can never be drawn, even at u = 0.
    `uniform` (N, 1) supplies the draws instead of `generator` (a CUDA graph replays pre-drawn ones)."""
    cdf = probs.cumsum(-1)  # (N, V)
    if uniform is None:
        uniform = torch.rand(probs.shape[0], 1, device=probs.device, generator=generator)
    u = uniform * cdf[:, -1:]  # (N, 1)
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[1] - 1).squeeze(1)  # (N,)


def choose_next(logits: torch.Tensor, temperature: float, top_k: int | None, greedy: bool,
                generator: torch.Generator | None = None, uniform: torch.Tensor | None = None):
    """The next token of each row from its logits (N, V), and the model's log-prob of it (temperature 1)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    if greedy:
        next_id = logp.argmax(-1)
    else:
        scaled = logits.float() / temperature
        if top_k is not None and top_k < scaled.shape[-1]:
            kth = scaled.topk(top_k, dim=-1).values[:, -1:]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        next_id = sample_categorical(scaled.softmax(-1), generator, uniform)
    return next_id, logp.gather(1, next_id[:, None]).squeeze(1)


def _generate_group(model, prompt, budget, stop_id, pad_id, temperature, top_k, greedy, generator, use_cache):
    if use_cache and budget > 0 and cuda_graphs.enabled(prompt.device):
        decoder = cuda_graphs.decoder(model, prompt.shape, budget, stop_id, pad_id, temperature, top_k, greedy)
        if decoder is not None:
            return decoder.run(prompt, generator)
    B = prompt.shape[0]
    device = prompt.device
    cache = KVCache(model.config, B, prompt.shape[1] + budget, device) if use_cache else None
    out = torch.full((B, budget), pad_id, dtype=torch.long, device=device)
    out_lp = torch.zeros((B, budget), device=device)
    out_mask = torch.zeros((B, budget), device=device)
    rows = torch.arange(B, device=device)  # the batch rows still decoding: the others are done
    alive = torch.ones(B, dtype=torch.bool, device=device)  # per row of `rows`: not stopped yet
    logits = model(prompt, cache)[:, -1]  # (B, V): prefill
    for step in range(budget):
        next_id, next_lp = choose_next(logits, temperature, top_k, greedy, generator)
        out[rows, step] = torch.where(alive, next_id, pad_id)
        out_lp[rows, step] = torch.where(alive, next_lp, 0.0)
        out_mask[rows, step] = alive.float()
        alive = alive & (next_id != stop_id)
        n_alive = int(alive.sum())
        if n_alive == 0 or step == budget - 1:
            return out[:, : step + 1], out_lp[:, : step + 1], out_mask[:, : step + 1]
        if n_alive <= len(rows) // 2:  # drop the stopped rows (at most log2(B) times per batch)
            live = alive.nonzero().squeeze(1)
            rows, alive, next_id = rows[live], alive[live], next_id[live]
            if use_cache:
                cache.keep(live)
        if use_cache:
            logits = model(next_id[:, None], cache)[:, -1]
        else:
            prefix = torch.cat([prompt[rows], out[rows, : step + 1]], dim=1)
            logits = model.unembed(model.features(prefix)[0][:, -1])  # unembedding the last position only
    return out[:, :0], out_lp[:, :0], out_mask[:, :0]  # budget == 0
