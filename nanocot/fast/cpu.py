"""CPU shortcuts for the loss, the RL log-probs and the sampler: same results as the core's plain code.

- Selective unembedding: a direct-SFT row has ~2 loss tokens in ~13, and the (d x vocab) unembedding with
  its softmax is a large share of a one-layer model's FLOPs, so a loss unembeds only the positions it reads
  (`GPT.logits_at`). On a CPU reading the mask is free; on a GPU it costs a host sync, dearer than the FLOPs.
- Token accuracy by comparing the target's logit with the row's max (vectorised) instead of an argmax (not
  vectorised on CPU); the two differ only on exact ties, which count as right here.
- Categorical sampling by inverting the CDF (cumsum + searchsorted) instead of `torch.multinomial`: the same
  distribution, several times faster at the RL batch. Used on every device (it is also what a CUDA graph
  can replay with pre-drawn uniforms).
Measurements: docs/LOG.md, 2026-11-27.
"""

import torch
import torch.nn.functional as F

from nanocot.data import Batch
from nanocot.model import GPT


def target_is_top(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1.0 where the target has the highest logit: `logits.argmax(-1) == targets` but for exact ties."""
    return (logits.gather(-1, targets[..., None]).squeeze(-1) >= logits.amax(-1)).float()


def masked_loss(model: GPT, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """train.masked_loss on a CPU: mean cross-entropy over the masked targets, and the token accuracy there.
    A full mask (pretraining) takes a plain mean; a partial one unembeds only the masked positions."""
    x, y, mask = batch
    if bool(mask.all()):
        logits = model(x)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten()), target_is_top(logits.detach(), y).mean()
    keep = mask > 0
    logits, targets = model.logits_at(x, keep), y[keep]  # (N, V), (N,)
    if targets.numel() == 0:
        return logits.sum() * 0.0, torch.zeros(())
    return F.cross_entropy(logits, targets), target_is_top(logits.detach(), targets).mean()


def token_logprobs(model: GPT, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, entropy_grad: bool):
    """rl.sequence_logprobs on a CPU: log-probs and entropies (N, T) only at the generated positions."""
    keep = mask > 0  # about 2 positions in 3
    logp_kept = F.log_softmax(model.logits_at(x, keep).float(), dim=-1)  # (n, V)
    logp, entropy = torch.zeros_like(mask), torch.zeros_like(mask)
    logp[keep] = logp_kept.gather(-1, y[keep][:, None]).squeeze(-1)
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy[keep] = -(logp_kept.exp() * logp_kept).sum(-1)
    return logp, entropy, mask


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None,
                       uniform: torch.Tensor | None = None) -> torch.Tensor:
    """One draw per row of probs (N, V): the first token whose cumulative mass exceeds a uniform draw.
    `right=True`: a zero-probability token (cut by top-k) is never drawn, even at u = 0. `uniform` (N, 1)
    supplies the draws instead of `generator` (a CUDA graph replays pre-drawn ones)."""
    cdf = probs.cumsum(-1)  # (N, V)
    if uniform is None:
        uniform = torch.rand(probs.shape[0], 1, device=probs.device, generator=generator)
    u = uniform * cdf[:, -1:]  # (N, 1)
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[1] - 1).squeeze(1)  # (N,)
