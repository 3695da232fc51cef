"""The one training loop for every next-token stage: pretraining, direct-answer SFT and the CoT warm-up.

- Flat and in a fixed order, as nanoGPT's: evaluate, batch, forward/backward, clip, check, step, log.
- The caller supplies `next_batch(step)` (drawing from `rng`), and optionally `evaluate(model) -> dict` and
  `stop(model, record) -> bool`, asked after each evaluation (the warm-up stops by accuracy: sft.py). So this
  file knows nothing about corpora or tasks.
- A step's batch may come in parts (rows of very different lengths collated apart, so short rows are not
  padded to the longest): their gradients add up to exactly the one-batch mean over all masked tokens.
- Ctrl-C, periodic resumable saves and the NaN guard are loop.py's. The state saved is the optimizer, the
  step and both random streams; the numpy stream *is* the data position, so a resumed run is exact.
- Fast paths (nanocot/fast/): on a CPU the loss unembeds only the masked positions; on CUDA the step is
  replayed as a CUDA graph. Both compute what `masked_loss` and `backward` below compute.
- Under torchrun each process trains on its rows of the global batch and the gradients are summed over the
  processes before clipping (distributed.py): the same run at any number of processes.
"""

import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from nanocot import distributed, fast
from nanocot.config import TrainConfig
from nanocot.data import Batch
from nanocot.fast import cpu as fast_cpu
from nanocot.fast import cuda_graphs
from nanocot.loop import Steps, check_finite
from nanocot.model import GPT


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up to config.lr, then cosine decay to lr * min_lr_ratio at the last step."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def fused_adam(model: torch.nn.Module) -> bool:
    """AdamW's fused kernel updates every parameter in one pass; at this size the per-parameter loop is pure
    overhead. CPU and CUDA have it."""
    return next(model.parameters()).device.type in ("cpu", "cuda")


def make_optimizer(model: GPT, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (biases and LayerNorm gains are not decayed)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95), fused=fused_adam(model))


def masked_loss(model: GPT, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the masked target tokens, and the argmax accuracy there."""
    x, y, mask = batch  # (B, T) each
    logits = model(x)  # (B, T, V)
    per_token = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(mask)  # (B, T)
    n = mask.sum().clamp(min=1)
    accuracy = ((logits.detach().argmax(-1) == y).float() * mask).sum() / n
    return (per_token * mask).sum() / n, accuracy


def backward(model: GPT, optimizer: torch.optim.Optimizer, parts: list[Batch], grad_clip: float,
             loss_fn: Callable = masked_loss, total: torch.Tensor | None = None) -> torch.Tensor:
    """Zero the gradients, backward through each part weighted by its share of the masked tokens, clip.
    Returns (loss, token accuracy, gradient norm) as one tensor: one device->host copy reads all three.
    With data parallelism `parts` are this process's rows and `total` the masked tokens of the whole batch:
    the gradients, loss and accuracy are then summed over the processes before clipping."""
    optimizer.zero_grad(set_to_none=True)
    if len(parts) == 1 and total is None:
        loss, accuracy = loss_fn(model, parts[0])
        loss.backward()
    else:
        counts = [mask.sum() for _, _, mask in parts]
        total = torch.stack(counts).sum().clamp(min=1) if total is None else total
        loss, accuracy = torch.zeros((), device=total.device), torch.zeros((), device=total.device)
        for part, count in zip(parts, counts):
            part_loss, part_accuracy = loss_fn(model, part)
            weight = count / total
            (part_loss * weight).backward()
            loss, accuracy = loss + part_loss.detach() * weight, accuracy + part_accuracy * weight
    if distributed.WORLD.size > 1:
        distributed.sum_gradients(model, [loss, accuracy])
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    return torch.stack([loss.detach(), accuracy, grad_norm])


def train(model: GPT, config: TrainConfig, next_batch: Callable[[int], Batch | list[Batch]],
          evaluate: Callable[[GPT], dict] | None = None, stop: Callable[[GPT, dict], bool] | None = None,
          desc: str = "train", rng: np.random.Generator | None = None, resume: dict | None = None,
          save: Callable[[dict, dict], None] | None = None, save_every: int = 0) -> dict:
    """Train up to config.steps. `rng` is the generator `next_batch` draws from; `resume` is a state from an
    earlier `save(record, state)` (the model's weights already loaded); `save` is called every `save_every`
    steps (0 = never) and on interrupt."""
    torch.manual_seed(config.seed)
    device = next(model.parameters()).device
    optimizer = make_optimizer(model, config)
    record = {"step": [], "loss": [], "token_accuracy": [], "eval": [], "tokens": 0, "flops": 0.0,
              "seconds": 0.0}
    first = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        torch.set_rng_state(resume["torch_rng"])
        if rng is not None:
            rng.bit_generator.state = resume["numpy_rng"]
        record, first = resume["record"], resume["step"]
    loss_fn = fast_cpu.masked_loss if fast.on_cpu(device) else masked_loss
    graphed = None
    if cuda_graphs.enabled(device) and distributed.WORLD.size == 1:
        plain_step = lambda parts: backward(model, optimizer, parts, config.grad_clip, loss_fn)
        graphed = cuda_graphs.GraphedStep(model, optimizer, plain_step)

    def state(next_step: int) -> dict:  # everything to continue exactly from the start of `next_step`
        return {"step": next_step, "record": record, "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": rng.bit_generator.state if rng is not None else None}  # the data position

    start, elapsed_before, stopped = time.perf_counter(), record["seconds"], False
    saving = None if save is None else lambda state: save(record, state)
    steps = Steps(first, config.steps, desc, state, saving, save_every)
    for step in steps:
        if evaluate is not None and config.eval_every > 0 and step % config.eval_every == 0:
            record["eval"].append({"step": step, **_run_eval(model, evaluate)})
            if stop is not None and stop(model, record):
                stopped = True
                break
        batch = next_batch(step)
        parts = batch if isinstance(batch, list) else [batch]
        lr = lr_at(step, config)
        loss, accuracy, grad_norm = _learn(model, optimizer, graphed, parts, lr, config.grad_clip, loss_fn)
        check_finite(step, loss, grad_norm)
        graphed.step() if graphed is not None else optimizer.step()
        _log(record, model, parts, step, loss, accuracy)
        record["seconds"] = elapsed_before + time.perf_counter() - start
        last_eval = record["eval"][-1] if record["eval"] else {}
        steps.show({"loss": f"{loss:.3f}", "acc": f"{accuracy:.2f}",
                    **{k: f"{v:.2f}" for k, v in last_eval.items() if k != "step"}})
    if evaluate is not None and not stopped:
        record["eval"].append({"step": config.steps, **_run_eval(model, evaluate)})
    record["seconds"] = elapsed_before + time.perf_counter() - start
    return record


def _learn(model: GPT, optimizer, graphed, parts: list[Batch], lr: float, grad_clip: float,
           loss_fn: Callable) -> list[float]:
    """Set the learning rate, then forward, backward and clip: (loss, token accuracy, gradient norm). On CUDA
    as a replayed graph; under torchrun on this process's rows of the global batch (distributed.py)."""
    if graphed is not None:
        graphed.set_lr(lr)
        return graphed.backward(parts).tolist()
    for group in optimizer.param_groups:
        group["lr"] = lr
    if distributed.WORLD.size == 1:
        return backward(model, optimizer, parts, grad_clip, loss_fn).tolist()
    total = sum(mask.sum() for _, _, mask in parts).clamp(min=1)  # the whole batch's tokens
    mine = []  # this process's rows of each part (none, when a part has fewer rows than processes)
    for x, y, mask in parts:
        rows = distributed.shard(x), distributed.shard(y), distributed.shard(mask)
        if len(rows[0]):
            mine.append(rows)
    return backward(model, optimizer, mine, grad_clip, loss_fn, total).tolist()


def _log(record: dict, model: GPT, parts: list[Batch], step: int, loss: float, accuracy: float) -> None:
    """The step's curves, and the tokens and training FLOPs of the whole batch."""
    for x, _, _ in parts:
        record["tokens"] += x.numel()
        record["flops"] += x.numel() * model.flops_per_token(x.shape[1])
    record["step"].append(step)
    record["loss"].append(loss)
    record["token_accuracy"].append(accuracy)


def _run_eval(model: GPT, evaluate: Callable[[GPT], dict]) -> dict:
    model.eval()
    with torch.no_grad():
        result = evaluate(model)
    model.train()
    return result
