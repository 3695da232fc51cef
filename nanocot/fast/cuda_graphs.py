"""Replaying the hot loops as CUDA graphs: on a GPU, models this small are bound by kernel launches.

A training step of the large preset is ~150 kernels of a few microseconds each; launched one by one from
Python, the GPU idles between them. A CUDA graph records the kernels of one step once and then launches all
of them with one call (docs/LOG.md, 2026-11-27). Two places use it, both only on CUDA and both computing what
the eager code computes:

- `GraphedStep` (train.py's loop): forward + backward + gradient clipping as one graph, the optimizer step
  as a second, so the loop can still read the loss and gradient norm and refuse a non-finite step *before*
  the weights change. The optimizer is made capturable, its learning rate a device tensor, so one recorded
  update serves every step of the schedule. A graph has fixed shapes, so each batch is right-padded to a
  multiple of `PAD_MULTIPLE` positions (padding carries no loss and, under the causal mask, changes no real
  position: tests/test_training.py) and each shape gets its own graph, captured the third time it is seen.
- `decoder(...)` (sampling.py): one graph per generated position (the KV cache's length differs at each),
  for a batch shape seen at least twice before; replayed `budget` times per call. The sampled tokens use
  uniform draws made in one call before the loop (the eager sampler draws them one position at a time), so
  graphed and eager sampling with one seed draw different (equally distributed) samples; greedy decoding
  is the same. tests/test_cuda.py checks both on a GPU.

`--no-cuda-graphs` (`ENABLED = False`) or `--plain` falls back to launching kernel by kernel.
"""

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nanocot import fast
from nanocot.fast.cpu import sample_categorical
from nanocot.model import KVCache

ENABLED = True
PAD_MULTIPLE = 16
EAGER_RUNS = 2  # uses of a shape before it is captured: lazy initialisation happens in eager runs, and
# shapes seen once (an evaluation's odd batch) are not worth a capture


def enabled(device: torch.device) -> bool:
    return ENABLED and fast.ENABLED and torch.device(device).type == "cuda"


class _CapturedOnUse(dict):
    """Captured graphs by key (a batch shape and what else fixes them), each made on its key's
    (EAGER_RUNS + 1)-th use and kept; before that the caller runs eagerly."""

    def __init__(self):
        super().__init__()
        self.uses: Counter = Counter()

    def fetch(self, key, capture):
        """The captured value for `key`, made now by `capture()` if this is the first use past the eager
        ones; None while the key is still in its eager runs."""
        self.uses[key] += 1
        if key not in self and self.uses[key] > EAGER_RUNS:
            self[key] = capture()
        return self.get(key)


@contextmanager
def _side_stream():
    """Run the block on a side stream, ordered after the current stream's work and before its next: eager
    warm-up runs before a capture belong off the default stream (CUDA graph docs)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        yield
    torch.cuda.current_stream().wait_stream(side)


def pad_batch(batch, multiple: int = PAD_MULTIPLE, limit: int | None = None):
    """Right-pad inputs, targets and mask (B, T) to the next multiple of `multiple` positions, but not past
    `limit` (the model's context); padding is token 0 with mask 0, so the masked loss and its gradient are
    unchanged."""
    x, y, mask = batch
    extra = -x.shape[1] % multiple
    if limit is not None:
        extra = max(0, min(extra, limit - x.shape[1]))
    if extra == 0:
        return batch
    return F.pad(x, (0, extra)), F.pad(y, (0, extra)), F.pad(mask, (0, extra))


@dataclass
class _CapturedStep:
    inputs: list  # static (x, y, mask) per micro-batch, refilled before each replay
    backward: torch.cuda.CUDAGraph
    optimizer_step: torch.cuda.CUDAGraph
    metrics: torch.Tensor  # static (loss, token accuracy, gradient norm) written by `backward`
    grads: list  # the gradient buffers both graphs use: held here so they outlive later captures


class GraphedStep:
    """One training step in two replayable halves: `backward(parts)` -> (loss, token accuracy, gradient norm)
    as one tensor, then `step()` updates the weights. `eager_backward(parts)` is train.py's plain step (zero
    the gradients, forward and backward, clip); it runs eagerly for a shape's first uses and is recorded on
    the third."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, eager_backward):
        self.model, self.optimizer, self.eager_backward = model, optimizer, eager_backward
        device = next(model.parameters()).device
        for group in optimizer.param_groups:  # one recorded update serves every step: step and lr on device
            group["capturable"] = True
            group["lr"] = torch.tensor(group["lr"], device=device)
        self.captured = _CapturedOnUse()  # batch shapes -> _CapturedStep
        self.pending: _CapturedStep | None = None  # the graph whose optimizer step `step()` replays

    def set_lr(self, value: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"].fill_(value)  # in place: the recorded optimizer step reads this tensor

    def backward(self, parts: list) -> torch.Tensor:
        parts = [pad_batch(part, limit=self.model.config.block_size) for part in parts]
        entry = self.captured.fetch(tuple(tuple(x.shape) for x, _, _ in parts), lambda: self._capture(parts))
        if entry is None:  # one of the shape's eager warm-up runs
            self.pending = None
            with _side_stream():
                return self.eager_backward(parts)
        for static, part in zip(entry.inputs, parts):
            for buffer, value in zip(static, part):
                buffer.copy_(value, non_blocking=True)
        entry.backward.replay()
        self.pending = entry
        return entry.metrics

    def step(self) -> None:
        if self.pending is None:
            self.optimizer.step()
        else:
            self.pending.optimizer_step.replay()

    def _capture(self, parts: list) -> _CapturedStep:
        """Record (not run) one step on static copies of `parts`; `backward` then replays it on them."""
        inputs = [tuple(t.clone() for t in part) for part in parts]
        backward, optimizer_step = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(backward):  # backward allocates this graph's own gradient buffers
            metrics = self.eager_backward(inputs)  # its zero_grad only sets .grad to None
        with torch.cuda.graph(optimizer_step):
            self.optimizer.step()
        grads = [p.grad for p in self.model.parameters()]
        return _CapturedStep(inputs, backward, optimizer_step, metrics, grads)


class _Decoder:
    """Every position's sampling step for one batch shape, as CUDA graphs over static buffers."""

    def __init__(self, model, shape, budget, stop_id, pad_id, temperature, top_k, greedy, choose_next):
        B, prompt_len = shape
        self.choose_next = choose_next  # sampling.choose_next, passed in: sampling imports this module
        device = next(model.parameters()).device
        self.model, self.prompt_len, self.budget = model, prompt_len, budget
        self.stop_id, self.pad_id = stop_id, pad_id
        self.temperature, self.top_k, self.greedy = temperature, top_k, greedy
        self.cache = KVCache(model.config, B, prompt_len + budget, device)
        self.logits = torch.zeros(B, model.config.vocab_size, device=device)
        self.uniform = torch.zeros(budget, B, 1, device=device)
        self.out = torch.full((B, budget), pad_id, dtype=torch.long, device=device)
        self.out_lp = torch.zeros(B, budget, device=device)
        self.out_mask = torch.zeros(B, budget, device=device)
        self.alive = torch.ones(B, dtype=torch.bool, device=device)
        with _side_stream():  # one eager pass first (lazy kernel set-up must not happen inside a capture)
            for position in range(budget):
                self._step(position)
        pool = torch.cuda.graph_pool_handle()  # shared: no tensor made inside one graph is read by another
        self.graphs = []
        for position in range(budget):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._step(position)
            self.graphs.append(graph)

    def _step(self, position: int) -> None:
        """Choose column `position` from `self.logits`, then feed that token to refill `self.logits`."""
        draw = lambda probs: sample_categorical(probs, uniform=self.uniform[position])
        next_id, next_lp = self.choose_next(self.logits, self.temperature, self.top_k, self.greedy, draw)
        self.out[:, position] = torch.where(self.alive, next_id, self.pad_id)
        self.out_lp[:, position] = torch.where(self.alive, next_lp, 0.0)
        self.out_mask[:, position] = self.alive.float()
        self.alive &= next_id != self.stop_id
        if position < self.budget - 1:
            self.cache.pos = self.prompt_len + position
            self.logits.copy_(self.model(next_id[:, None], self.cache)[:, -1])

    def run(self, prompt: torch.Tensor, generator: torch.Generator | None):
        """sampling.decode's result for `prompt` (B, prompt_len)."""
        self.cache.pos = 0
        self.logits.copy_(self.model(prompt, self.cache)[:, -1])  # prefill, eager
        self.out.fill_(self.pad_id), self.out_lp.zero_(), self.out_mask.zero_(), self.alive.fill_(True)
        if not self.greedy:
            self.uniform.uniform_(generator=generator)
        for position, graph in enumerate(self.graphs):
            graph.replay()
            if position % 8 == 7 and not self.alive.any():  # a host sync every 8 positions, not every one
                break
        width = int(self.out_mask.sum(1).max())  # the longest row, stop token included: what eager returns
        return self.out[:, :width].clone(), self.out_lp[:, :width].clone(), self.out_mask[:, :width].clone()


_decoders = _CapturedOnUse()


def decoder(model, shape, budget, stop_id, pad_id, temperature, top_k, greedy,
            choose_next) -> _Decoder | None:
    """The graphed decoder for this model and batch shape, captured on the shape's third use; None before
    (the caller decodes eagerly). Keyed by the weights' address too: a model moved or rebuilt gets new
    graphs."""
    settings = (budget, stop_id, pad_id, temperature, top_k, greedy)
    key = (id(model), model.W_E.weight.data_ptr(), tuple(shape), *settings)
    return _decoders.fetch(key, lambda: _Decoder(model, shape, *settings, choose_next))
