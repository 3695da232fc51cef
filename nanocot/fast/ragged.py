"""A few new tokens after prompts of many lengths, in one batch: REINFORCE's answers after paraphrased traces.

`sampling.generate` groups prompts by length and runs one small batch per group; after paraphrased traces
nearly every prompt has its own length, so that is dozens of batches of one row. Here every row sits in one
right-padded batch and the prefix is recomputed for each new token (no cache): cheaper for the 2-3 tokens of
an answer. Right padding changes nothing: attention is causal and every row starts at position 0. Greedy
results equal `generate`'s (tests/test_fast_paths.py).
"""

import torch

from nanocot.model import GPT
from nanocot.sampling import Samples, choose_next, sampler


@torch.no_grad()
def generate_ragged(model: GPT, prompts: list[list[int]], max_new_tokens: int, stop_id: int, pad_id: int = 0,
                    temperature: float = 1.0, top_k: int | None = None, greedy: bool = False,
                    generator: torch.Generator | None = None) -> Samples:
    """`sampling.generate`'s result, in one batch. A row also stops when it reaches the context's end."""
    device = next(model.parameters()).device
    N, block = len(prompts), model.config.block_size
    lengths = [len(p) for p in prompts]
    if not all(0 < n < block for n in lengths):
        raise ValueError(f"prompts must have 1..{block - 1} tokens")
    width = min(block, max(lengths) + max_new_tokens)
    x = torch.tensor([p + [pad_id] * (width - len(p)) for p in prompts], device=device)  # (N, width)
    tokens = torch.full((N, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((N, max_new_tokens), device=device)
    mask = torch.zeros((N, max_new_tokens), device=device)
    rows = torch.arange(N, device=device)
    end = torch.tensor(lengths, device=device)  # where each row's next token goes
    alive = torch.ones(N, dtype=torch.bool, device=device)
    draw = sampler(generator)
    for step in range(max_new_tokens):
        features = model.features(x[:, : int(end.max())])[0]  # (N, T, d)
        logits = model.unembed(features[rows, end - 1])  # (N, V): each row's last real position only
        next_id, next_lp = choose_next(logits, temperature, top_k, greedy, draw)
        tokens[:, step] = torch.where(alive, next_id, pad_id)
        logprobs[:, step] = torch.where(alive, next_lp, 0.0)
        mask[:, step] = alive.float()
        alive = alive & (next_id != stop_id) & (end + 1 < block)
        if not alive.any():
            return Samples(tokens[:, : step + 1], logprobs[:, : step + 1], mask[:, : step + 1])
        x[rows[alive], end[alive]] = next_id[alive]
        end = end + alive.long()
    return Samples(tokens, logprobs, mask)
