"""Fast paths: the same computations as the plain core, arranged to run faster. Read the core first.

- Each fast path computes what a plain function of the core computes, and a test proves the two agree
  (tests/test_fast_paths.py): the loss and its gradient, the RL log-probs, the sampler's distribution,
  greedy decoding.
- They are switched on where they pay, and off everywhere with `--plain` (`ENABLED = False`):
  - `cpu.py`: a loss that unembeds only the positions it reads, and a max-based token accuracy (CPU);
    categorical sampling by inverting the CDF (every device);
  - `ragged.py`: a few new tokens after prompts of many lengths, in one right-padded batch;
  - `cuda_graphs.py`: the training step and the decoding steps replayed as CUDA graphs (CUDA only; also
    off with `--no-cuda-graphs`).
- The core imports this package at one `if` per fast path; nothing here imports train.py or rl.py.
"""

import torch

ENABLED = True  # False: every fast path off, the core's plain code everywhere (--plain)


def on_cpu(device: torch.device) -> bool:
    """The CPU shortcuts: reading a mask costs no host-device sync there."""
    return ENABLED and torch.device(device).type == "cpu"
