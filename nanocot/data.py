"""Training batches: (inputs, targets, loss mask) for the one masked next-token loop.

- Pretraining: windows of the corpus that start at a line boundary, so the model always sees a line's
  beginning the way a task prompt begins (a prompt unlike the corpus loses the pretrained skills),
  loss on every token.
- Task stages: prompt + completion, loss only where the mask says: `direct` masks everything but the
  answer (and the newline that ends it, so the model learns to stop); `warmup` (CoT SFT) covers the trace
  and the answer. Rows are right-padded; padding never carries loss.
"""

import random

import numpy as np
import torch

from nanocot.paraphrase import paraphrase_body
from nanocot.task import COT, Problem, completion, prompt, reference_trace
from nanocot.tokenizer import Tokenizer
from nanocot.trace import parse_trace

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # inputs (B, T), targets (B, T), mask (B, T)


def task_example(tok: Tokenizer, problem: Problem, mode: str,
                 text: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids of prompt + completion, and a 0/1 mask that is 1 exactly on the completion's tokens. The
    completion is the task's reference one unless `text` gives another (a control's trace, controls.py)."""
    prompt_ids = tok.encode(prompt(problem, mode))
    completion_ids = tok.encode(completion(problem, mode) if text is None else text)
    return prompt_ids + completion_ids, [0] * len(prompt_ids) + [1] * len(completion_ids)


def reading_example(tok: Tokenizer, problem: Problem, paraphraser, rng: random.Random,
                    block_size: int, from_end: bool = False) -> tuple[list[int], list[int]]:
    """Teach the model to *read* a paraphrased trace: prompt + the reference trace paraphrased (context, no
    loss) + "answer\n" (loss). The answer then has to come from what the trace says, in whatever words; the
    model is never trained to *write* paraphrases. Steps that would overflow the context stay as written: the
    last ones, or with `from_end` the first ones."""
    prompt_ids = tok.encode(prompt(problem, COT))
    room = block_size + 1 - len(prompt_ids) - 2  # collate shifts by one; keep "answer\n"
    fits = lambda text: len(tok.encode(text)) <= room
    body, _ = paraphrase_body(paraphraser, parse_trace(reference_trace(problem)).steps, rng, fits, from_end)
    body_ids, answer_ids = tok.encode(body), tok.encode(f"{problem.answer}\n")
    return prompt_ids + body_ids + answer_ids, [0] * (len(prompt_ids) + len(body_ids)) + [1] * len(answer_ids)


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int, device) -> Batch:
    """Right-pad and shift by one: position t predicts token t+1, weighted by that token's mask.
    Rows are filled in numpy and cross to torch once (a torch.tensor per row cost more than the step's
    forward pass for the small model)."""
    T = max(len(ids) for ids, _ in examples) - 1
    x = np.full((len(examples), T), pad_id, dtype=np.int64)
    y = np.full((len(examples), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(examples), T), dtype=np.float32)
    for row, (ids, m) in enumerate(examples):
        n = len(ids) - 1
        x[row, :n] = ids[:-1]
        y[row, :n] = ids[1:]
        mask[row, :n] = m[1:]
    return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device), torch.from_numpy(mask).to(device)


class CorpusWindows:
    """Line-aligned windows of `seq_len + 1` tokens from the tokenized corpus."""

    def __init__(self, tok: Tokenizer, text: str, seq_len: int):
        self.tokens = torch.tensor(tok.encode(text), dtype=torch.long)
        starts = (self.tokens == tok.newline_id).nonzero().flatten()
        self.starts = starts[starts + seq_len + 1 <= len(self.tokens)]
        if len(self.starts) == 0:
            raise ValueError(f"corpus of {len(self.tokens)} tokens is shorter than one window of "
                             f"{seq_len + 1}")
        self.seq_len = seq_len

    def batch(self, rng: np.random.Generator, batch_size: int, device) -> Batch:
        picks = self.starts[torch.from_numpy(rng.integers(0, len(self.starts), size=batch_size))]
        offsets = picks[:, None] + torch.arange(self.seq_len + 1)  # (B, T+1)
        window = self.tokens[offsets]
        mask = torch.ones(batch_size, self.seq_len, device=device)  # pretraining: every token counts
        return window[:, :-1].to(device), window[:, 1:].to(device), mask
