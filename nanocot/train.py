"""The one training loop for every next-token stage (pretraining, direct SFT, CoT warm-up).

Flat and in a fixed order, as nanoGPT's: eval, forward/backward, clip, step, log. The caller supplies
`next_batch(step)` and an optional `evaluate(model) -> dict`, so this file knows nothing about corpora or
tasks. It returns the stage's record: curves, tokens, seconds and training FLOPs.
"""

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from nanocot.config import TrainConfig
from nanocot.data import Batch
from nanocot.model import GPT


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up to config.lr, then cosine decay to lr * min_lr_ratio at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def make_optimizer(model: GPT, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (biases and LayerNorm gains are not decayed)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95))


def masked_loss(model: GPT, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the masked target tokens, and the token accuracy there."""
    x, y, mask = batch
    logits = model(x)  # (B, T, V)
    per_token = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(mask)
    n = mask.sum().clamp(min=1)
    accuracy = ((logits.argmax(-1) == y).float() * mask).sum() / n
    return (per_token * mask).sum() / n, accuracy


def train(
    model: GPT,
    config: TrainConfig,
    next_batch: Callable[[int], Batch],
    evaluate: Callable[[GPT], dict] | None = None,
    desc: str = "train",
) -> dict:
    torch.manual_seed(config.seed)
    optimizer = make_optimizer(model, config)
    record = {"step": [], "loss": [], "token_accuracy": [], "eval": [], "tokens": 0, "flops": 0.0}
    start = time.perf_counter()
    bar = tqdm(range(config.steps), desc=desc, dynamic_ncols=True)
    for step in bar:
        if evaluate is not None and config.eval_every > 0 and step % config.eval_every == 0:
            record["eval"].append({"step": step, **_run_eval(model, evaluate)})
        batch = next_batch(step)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        loss, accuracy = masked_loss(model, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()

        B, T = batch[0].shape
        record["tokens"] += B * T
        record["flops"] += B * T * model.flops_per_token(T)
        record["step"].append(step)
        record["loss"].append(loss.item())
        record["token_accuracy"].append(accuracy.item())
        shown = {"loss": f"{loss.item():.3f}", "acc": f"{accuracy.item():.2f}"}
        if record["eval"]:
            shown.update({k: f"{v:.2f}" for k, v in record["eval"][-1].items() if k != "step"})
        bar.set_postfix(shown, refresh=False)
    if evaluate is not None:
        record["eval"].append({"step": config.steps, **_run_eval(model, evaluate)})
    record["seconds"] = time.perf_counter() - start
    return record


def _run_eval(model: GPT, evaluate: Callable[[GPT], dict]) -> dict:
    model.eval()
    with torch.no_grad():
        result = evaluate(model)
    model.train()
    return result
