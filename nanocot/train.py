"""The one training loop for every next-token stage (pretraining, direct SFT, CoT warm-up).

- Flat and in a fixed order, as nanoGPT's: stop?, eval, forward/backward, clip, step, log, checkpoint.
- The caller supplies `next_batch(step)` (drawing from `rng`) and an optional `evaluate(model) -> dict`, so
  this file knows nothing about corpora or tasks. A step's batch may come as a list of micro-batches (rows of
  very different lengths collated apart, so short rows are not padded to the longest): their gradients add
  up to exactly the one-batch mean over all masked tokens. It returns the stage's record: curves, tokens, seconds
  and training FLOPs.
- Exact resume: `state_dict`-style trainer state (optimizer, step, numpy and torch random streams; the
  numpy stream *is* the data position) is handed to `save(record, state)` every `save_every` steps and
  when the run is interrupted; `resume=` continues from it bit for bit (tests/test_reliability.py).
- Ctrl-C / SIGTERM never cut a step in half: the signal only raises a flag, and the loop stops at the next
  step boundary, saves, and raises KeyboardInterrupt. A second Ctrl-C stops at once.
- A non-finite loss or gradient norm raises FloatingPointError naming the step *before* the optimizer
  touches the weights, so the last periodic checkpoint on disk is the last good state.
- A step is `EagerStep` (kernel by kernel) or, on CUDA, `cuda_graphs.GraphedStep` (the same step replayed as
  CUDA graphs). The loop draws step s+1's batch after launching step s and before reading its loss, so a GPU
  computes while the CPU builds the next batch; the random stream and exact resume are unchanged.
"""

import math
import signal
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nanocot import cuda_graphs
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


def make_optimizer(model: GPT, config: TrainConfig, capturable: bool = False) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (biases and LayerNorm gains are not decayed). `capturable`
    (for a CUDA graph, cuda_graphs.GraphedStep) keeps the step count and the learning rate in device
    tensors, so one recorded update serves every step of the schedule (set_lr writes into the tensor)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    device = next(model.parameters()).device
    lr = torch.tensor(config.lr, device=device) if capturable else config.lr
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=fused_adam(model), capturable=capturable)


def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    """The learning rate of every group: a float, or written into the tensor of a capturable optimizer."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)  # in place: a captured optimizer step reads this tensor
        else:
            group["lr"] = value


def fused_adam(model: torch.nn.Module) -> bool:
    """AdamW's fused kernel updates every parameter in one pass: at this size the per-parameter loop is
    pure overhead (clip + step 3.4 -> 1.1 ms for `large` on 2 CPU threads). CPU and CUDA have it."""
    return next(model.parameters()).device.type in ("cpu", "cuda")


# Devices on which a loss unembeds only the positions it reads (GPT.logits_at). On a CPU that pays: a direct-SFT
# row has ~2 loss tokens in ~13, and the (d x vocab) unembedding with its softmax is a large share of a one-layer
# model's FLOPs (small direct SFT step 0.65x, CoT warm-up 0.60x, large direct 0.91x, REINFORCE's learning pass
# 0.74x the time). On a GPU, picking rows needs a device sync per step, dearer than the FLOPs at this size.
SELECTIVE_UNEMBED_DEVICES = ("cpu",)


def target_is_top(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1.0 where the target token has the highest logit, else 0.0: the training log's token accuracy. The same as
    `logits.argmax(-1) == targets` except on exact ties (counted right here), and ~6x faster on CPU (a max is
    vectorised, an argmax is not: 0.6 ms of the small model's 10.5 ms pretraining step)."""
    return (logits.gather(-1, targets[..., None]).squeeze(-1) >= logits.amax(-1)).float()


def masked_loss(model: GPT, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the masked target tokens, and the token accuracy there. Three paths with the same
    loss and gradient: on a CPU, a partial mask (SFT) unembeds only the masked positions and a full one
    (pretraining) takes a plain mean; elsewhere (no host sync to read the mask) a masked mean over every position."""
    x, y, mask = batch
    selective = x.device.type in SELECTIVE_UNEMBED_DEVICES  # where reading the mask costs no host sync
    every = selective and bool(mask.all())
    if selective and not every:
        keep = mask > 0
        logits, targets = model.logits_at(x, keep), y[keep]  # (N, V), (N,)
        if targets.numel() == 0:
            return logits.sum() * 0.0, torch.zeros(())
        return F.cross_entropy(logits, targets), target_is_top(logits.detach(), targets).mean()
    logits = model(x)  # (B, T, V)
    if every:  # no mask arithmetic when every token counts
        return F.cross_entropy(logits.flatten(0, 1), y.flatten()), target_is_top(logits.detach(), y).mean()
    per_token = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(mask)
    n = mask.sum().clamp(min=1)
    accuracy = (target_is_top(logits.detach(), y) * mask).sum() / n
    return (per_token * mask).sum() / n, accuracy


def accumulate(model: GPT, parts: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward through each micro-batch, weighted by its share of the masked tokens, so the gradient is that
    of one batch holding every row; returns the step's (detached) loss and token accuracy. One part: exactly
    `masked_loss(...).backward()`, with no weighting ops on the hot path."""
    if len(parts) == 1:
        loss, accuracy = masked_loss(model, parts[0])
        loss.backward()
        return loss.detach(), accuracy
    counts = [mask.sum() for _, _, mask in parts]
    total = torch.stack(counts).sum().clamp(min=1)
    loss = accuracy = torch.zeros((), device=total.device)
    for part, count in zip(parts, counts):
        part_loss, part_accuracy = masked_loss(model, part)
        weight = count / total
        (part_loss * weight).backward()
        loss, accuracy = loss + part_loss.detach() * weight, accuracy + part_accuracy * weight
    return loss, accuracy


class EagerStep:
    """One training step, kernel by kernel: `backward(parts)` zeroes the gradients, runs forward and backward
    over the micro-batches and clips, returning (loss, token accuracy, gradient norm) as one tensor; `step()`
    then updates the weights. Split in two so the loop can refuse a non-finite step before the update.
    cuda_graphs.GraphedStep replays the same two halves as CUDA graphs."""

    def __init__(self, model: GPT, optimizer: torch.optim.Optimizer, grad_clip: float):
        self.model, self.optimizer, self.grad_clip = model, optimizer, grad_clip

    def backward(self, parts: list[Batch]) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss, accuracy = accumulate(self.model, parts)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        return torch.stack([loss.detach(), accuracy, grad_norm])

    def step(self) -> None:
        self.optimizer.step()


@contextmanager
def stop_requests() -> Iterator[threading.Event]:
    """While active, SIGINT/SIGTERM set the yielded flag instead of raising inside a half-done step; a
    second signal raises KeyboardInterrupt at once. Outside the main thread signals cannot be caught, so
    the flag simply never fires."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.is_set():
            raise KeyboardInterrupt
        flag.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def train(
    model: GPT,
    config: TrainConfig,
    next_batch: Callable[[int], Batch | list[Batch]],
    evaluate: Callable[[GPT], dict] | None = None,
    desc: str = "train",
    rng: np.random.Generator | None = None,
    resume: dict | None = None,
    save: Callable[[dict, dict], None] | None = None,
    save_every: int = 0,
) -> dict:
    """Train up to config.steps. `rng` is the generator `next_batch` draws from (its state is the data
    position); `resume` is a trainer state from an earlier `save(record, state)` (the model's weights must
    already be loaded); `save` is called every `save_every` steps (0 = never) and on interrupt."""
    torch.manual_seed(config.seed)
    graphed = cuda_graphs.enabled(next(model.parameters()).device)
    optimizer = make_optimizer(model, config, capturable=graphed)
    trainer = EagerStep(model, optimizer, config.grad_clip)
    if graphed:
        trainer = cuda_graphs.GraphedStep(trainer)
    record = {"step": [], "loss": [], "token_accuracy": [], "eval": [], "tokens": 0, "flops": 0.0, "seconds": 0.0}
    first = 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        torch.set_rng_state(resume["torch_rng"])
        if rng is not None:
            rng.bit_generator.state = resume["numpy_rng"]
        record, first = resume["record"], resume["step"]

    def draw(step: int) -> tuple[dict | None, list[Batch]]:
        """The batch of `step` (as micro-batches) and the data position just before it was drawn."""
        position = rng.bit_generator.state if rng is not None else None
        batch = next_batch(step)
        return position, batch if isinstance(batch, list) else [batch]

    def state(step: int, position: dict | None) -> dict:  # everything to continue exactly from the start of `step`
        return {"step": step, "record": record, "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                "numpy_rng": position}

    below = None  # with stop_nearest: the last evaluation under the threshold (not kept across a resume)
    start, elapsed_before = time.perf_counter(), record["seconds"]
    bar = tqdm(range(first, config.steps), desc=desc, dynamic_ncols=True, initial=first, total=config.steps)
    upcoming = draw(first) if first < config.steps else None
    with stop_requests() as stop:
        for step in bar:
            position, parts = upcoming
            if stop.is_set():  # between steps: the saved state is exactly "steps 0..step-1 done"
                if save is not None and step > 0:  # nothing done yet: keep whatever file is there
                    save(record, state(step, position))
                raise KeyboardInterrupt(f"interrupted at step {step}")
            if evaluate is not None and config.eval_every > 0 and step % config.eval_every == 0:
                record["eval"].append({"step": step, **_run_eval(model, evaluate)})
                # on training-split problems, so the test set never steers training
                accuracy = record["eval"][-1].get("train_accuracy", 0.0)
                if 0 < config.stop_accuracy <= accuracy:
                    record["stopped_at"] = step  # config.stop_accuracy reached: steps 0..step-1 are the run
                    if config.stop_nearest and below is not None and \
                            config.stop_accuracy - below["accuracy"] < accuracy - config.stop_accuracy:
                        _roll_back(model, record, below)
                    break
                if config.stop_nearest and config.stop_accuracy > 0:  # the last evaluation below it, to return to
                    below = {"step": step, "accuracy": accuracy,
                             "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            set_lr(optimizer, lr_at(step, config))
            metrics = trainer.backward(parts)
            # the next batch is built on the CPU while a GPU still runs this step (on a CPU, simply next)
            upcoming = draw(step + 1) if step + 1 < config.steps else None
            # one device->host copy per step (on a GPU each .item() is a full synchronisation)
            loss_value, accuracy_value, norm_value = metrics.tolist()
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"non-finite loss at step {step}")
            if not math.isfinite(norm_value):  # clipping cannot repair inf/nan; stop before the weights see it
                raise FloatingPointError(f"non-finite gradient at step {step}")
            trainer.step()

            for x, _, _ in parts:
                B, T = x.shape
                record["tokens"] += B * T
                record["flops"] += B * T * model.flops_per_token(T)
            record["step"].append(step)
            record["loss"].append(loss_value)
            record["token_accuracy"].append(accuracy_value)
            record["seconds"] = elapsed_before + time.perf_counter() - start
            shown = {"loss": f"{record['loss'][-1]:.3f}", "acc": f"{record['token_accuracy'][-1]:.2f}"}
            if record["eval"]:
                shown.update({k: f"{v:.2f}" for k, v in record["eval"][-1].items() if k != "step"})
            bar.set_postfix(shown, refresh=False)
            if save is not None and save_every > 0 and (step + 1) % save_every == 0 and step + 1 < config.steps:
                save(record, state(step + 1, upcoming[0]))
    if evaluate is not None and "stopped_at" not in record:
        record["eval"].append({"step": config.steps, **_run_eval(model, evaluate)})
    record["seconds"] = elapsed_before + time.perf_counter() - start
    return record


def _roll_back(model: GPT, record: dict, below: dict) -> None:
    """`stop_nearest`: the stage crossed its stop threshold by more than it was under it at the evaluation before:
    end at that evaluation instead. Chaining steps can appear within 25 steps (seed 5: 59.7% -> 84.3% training accuracy),
    and a warm-up that overshoots leaves REINFORCE little to do (docs/LOG.md, session 10). The steps after it
    leave the record's per-step logs and its evaluation moves to record["overshot"], so the record ends where
    the weights are; their tokens, FLOPs and seconds stay counted (they were spent)."""
    model.load_state_dict(below["weights"])
    kept = sum(s < below["step"] for s in record["step"])
    for key in ("step", "loss", "token_accuracy"):
        del record[key][kept:]
    record["stopped_at"] = below["step"]
    record["overshot"] = record["eval"].pop()  # the evaluation that crossed the threshold


def _run_eval(model: GPT, evaluate: Callable[[GPT], dict]) -> dict:
    model.eval()
    with torch.no_grad():
        result = evaluate(model)
    model.train()
    return result
