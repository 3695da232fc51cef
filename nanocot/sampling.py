"""Batched generation with a KV cache, for RL and evaluation alike.

- Prompts are grouped by length, so the rows of a group share positions: no padding and no attention mask
  (learned absolute positions would shift under left-padding).
- The prompt is fed once (the prefill); then each step feeds only the token just drawn, whose keys and
  values join the cache. `use_cache=False` recomputes the whole prefix instead: the reference that a test
  compares the cache with.
- Each row stops at its first `stop_id` (a newline); its later positions are padding with mask 0. Once half
  of a group's rows have stopped they leave the batch, cache included, so one rambling row does not keep
  the others decoding to `max_new_tokens`.
- The returned log-probs are the model's own (temperature 1, no top-k), the quantity REINFORCE
  differentiates; temperature and top-k only shape which token is drawn.
- A `torch.Generator` seeds the draws, so a run is reproducible.
"""

from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F

from nanocot import fast
from nanocot.fast import cuda_graphs
from nanocot.fast.cpu import sample_categorical
from nanocot.model import GPT, KVCache


@dataclass
class Samples:
    tokens: torch.Tensor  # (N, T) generated token ids, pad_id after each row's stop
    logprobs: torch.Tensor  # (N, T) the model's log-prob of each generated token (0 where mask is 0)
    mask: torch.Tensor  # (N, T) 1.0 on generated tokens up to and including the stop token

    def lengths(self) -> list[int]:
        return self.mask.sum(1).long().tolist()


def sampler(generator: torch.Generator | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """probs (N, V) -> one drawn token id per row (N,)."""
    if fast.ENABLED:  # the same distribution, drawn faster (fast/cpu.py)
        return partial(sample_categorical, generator=generator)
    return lambda probs: torch.multinomial(probs, 1, generator=generator).squeeze(1)


def choose_next(logits: torch.Tensor, temperature: float, top_k: int | None, greedy: bool,
                draw: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The next token of each row of logits (N, V), and the model's (temperature 1) log-prob of it."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (N, V)
    if greedy:
        next_id = logp.argmax(-1)
    else:
        scaled = logits.float() / temperature
        if top_k is not None and top_k < scaled.shape[-1]:
            kth = scaled.topk(top_k, dim=-1).values[:, -1:]  # (N, 1)
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        next_id = draw(scaled.softmax(-1))
    return next_id, logp.gather(1, next_id[:, None]).squeeze(1)  # (N,), (N,)


@torch.no_grad()
def generate(model: GPT, prompts: list[list[int]], max_new_tokens: int, stop_id: int, pad_id: int = 0,
             temperature: float = 1.0, top_k: int | None = None, greedy: bool = False,
             generator: torch.Generator | None = None, use_cache: bool = True) -> Samples:
    """Continue each prompt until its first `stop_id` or `max_new_tokens`; rows in prompt order."""
    device, N = next(model.parameters()).device, len(prompts)
    tokens = torch.full((N, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((N, max_new_tokens), device=device)
    mask = torch.zeros((N, max_new_tokens), device=device)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        if not 0 < len(p) < model.config.block_size:
            raise ValueError(f"prompt {i} has {len(p)} tokens; it must have 1..{model.config.block_size - 1}")
        groups[len(p)].append(i)
    choose = partial(choose_next, temperature=temperature, top_k=top_k, greedy=greedy,
                     draw=sampler(generator))
    for length, rows in groups.items():
        budget = min(max_new_tokens, model.config.block_size - length)
        prompt = torch.tensor([prompts[i] for i in rows], device=device)  # (B, length)
        graphed = None
        if use_cache and cuda_graphs.enabled(device):  # a recorded decoder, once this shape has recurred
            graphed = cuda_graphs.decoder(model, prompt.shape, budget, stop_id, pad_id, temperature, top_k,
                                          greedy, choose_next)
        if graphed is not None:
            t, lp, m = graphed.run(prompt, generator)
        else:
            t, lp, m = decode(model, prompt, budget, stop_id, pad_id, choose, use_cache)
        index = torch.tensor(rows, device=device)
        tokens[index, : t.shape[1]], logprobs[index, : t.shape[1]], mask[index, : t.shape[1]] = t, lp, m
    return Samples(tokens, logprobs, mask)


def decode(model: GPT, prompt: torch.Tensor, budget: int, stop_id: int, pad_id: int,
           choose: Callable, use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One group of equal-length prompts (B, T0) -> new tokens, their log-probs and mask, (B, <= budget)."""
    B, device = prompt.shape[0], prompt.device
    out = torch.full((B, budget), pad_id, dtype=torch.long, device=device)
    out_lp, out_mask = torch.zeros((B, budget), device=device), torch.zeros((B, budget), device=device)
    if budget == 0:
        return out, out_lp, out_mask
    cache = KVCache(model.config, B, prompt.shape[1] + budget, device) if use_cache else None
    rows = torch.arange(B, device=device)  # the batch rows still in the batch
    alive = torch.ones(B, dtype=torch.bool, device=device)  # per entry of `rows`: not stopped yet
    logits = model(prompt, cache)[:, -1]  # (B, V): the prefill
    for step in range(budget):
        next_id, next_lp = choose(logits)
        out[rows, step] = torch.where(alive, next_id, pad_id)
        out_lp[rows, step] = torch.where(alive, next_lp, 0.0)
        out_mask[rows, step] = alive.float()
        alive = alive & (next_id != stop_id)
        n_alive = int(alive.sum())
        if n_alive == 0 or step == budget - 1:
            break
        if n_alive <= len(rows) // 2:  # drop the stopped rows (at most log2(B) times per batch)
            live = alive.nonzero().squeeze(1)
            rows, alive, next_id = rows[live], alive[live], next_id[live]
            if use_cache:
                cache.keep(live)
        if use_cache:
            logits = model(next_id[:, None], cache)[:, -1]  # (rows, V): one new position
        else:  # recompute the prefix, unembedding its last position only
            prefix = torch.cat([prompt[rows], out[rows, : step + 1]], dim=1)
            logits = model.unembed(model.features(prefix)[0][:, -1])
    return out[:, : step + 1], out_lp[:, : step + 1], out_mask[:, : step + 1]
