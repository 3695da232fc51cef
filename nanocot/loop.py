"""Run control shared by both training loops (train.train and rl.train_rl), so each loop shows only its step.

- A progress bar over the steps still to run.
- Ctrl-C / SIGTERM never cut a step in half: the signal only raises a flag, and the run stops at the next
  step boundary, hands a resumable state to `save` and raises KeyboardInterrupt. A second Ctrl-C stops at
  once.
- Periodic saves: every `save_every` steps, `save(state(next_step))`; passing that state back as a loop's
  `resume=` continues the run bit for bit (tests/test_reliability.py).
- The NaN guard: a non-finite loss or gradient norm raises FloatingPointError naming the step *before* the
  optimizer touches the weights, so the last checkpoint on disk is the last good state.
"""

import math
import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from tqdm import tqdm

from nanocot import distributed


@contextmanager
def stop_requests() -> Iterator[threading.Event]:
    """While active, SIGINT/SIGTERM set the yielded flag instead of raising inside a half-done step; a second
    signal raises KeyboardInterrupt at once. Outside the main thread signals cannot be caught: the flag never
    fires."""
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


class Steps:
    """`for step in Steps(...)`: the steps `first..total-1`, with the progress bar, stop requests and
    periodic saves around each. `state(next_step)` is the loop's resumable state between two steps."""

    def __init__(self, first: int, total: int, desc: str, state: Callable[[int], dict],
                 save: Callable[[dict], None] | None = None, save_every: int = 0):
        self.first, self.total, self.state, self.save, self.save_every = first, total, state, save, save_every
        self.bar = tqdm(range(first, total), desc=desc, dynamic_ncols=True, initial=first, total=total,
                        disable=not distributed.WORLD.main)  # one bar per run, not per process

    def __iter__(self) -> Iterator[int]:
        with stop_requests() as stop:
            for step in self.bar:
                # between steps, the saved state is exactly "steps 0..step-1 done"; every process stops at
                # the same step, wherever the signal reached first
                if distributed.any_rank(stop.is_set()):
                    if self.save is not None and step > 0:  # nothing done yet: keep whatever file is there
                        self.save(self.state(step))
                    raise KeyboardInterrupt(f"interrupted at step {step}")
                yield step
                done = step + 1
                due = self.save_every > 0 and done % self.save_every == 0 and done < self.total
                if self.save is not None and due:
                    self.save(self.state(done))

    def show(self, values: dict[str, str]) -> None:
        self.bar.set_postfix(values, refresh=False)


def check_finite(step: int, loss: float, grad_norm: float, where: str = "step") -> None:
    """Raise before the optimizer step if the loss or the gradient norm is inf or NaN (clipping cannot repair
    either)."""
    if not math.isfinite(loss):
        raise FloatingPointError(f"non-finite loss at {where} {step}")
    if not math.isfinite(grad_norm):
        raise FloatingPointError(f"non-finite gradient at {where} {step}")
