"""Accuracy measurements used during training (evaluate.py builds the full set on these).

`direct_accuracy` is greedy decoding's first token, computed with one batched forward pass: the answer
is one number token, so "argmax at the last prompt position == answer" is exactly greedy exact-match
(the newline that follows does not change which number was answered).
"""

from collections import defaultdict

import numpy as np
import torch

from nanocot.model import GPT
from nanocot.sampling import generate
from nanocot.task import COT, DIRECT, ModularAddition, Problem, prompt, reward
from nanocot.tokenizer import Tokenizer


@torch.no_grad()
def direct_predictions(model: GPT, tok: Tokenizer, problems: list[Problem],
                       batch_size: int = 512) -> list[str]:
    """Greedy first completion token for each problem's direct prompt, as text."""
    device = next(model.parameters()).device
    by_length: dict[int, list[int]] = defaultdict(list)  # equal-length prompts batch without padding
    encoded = [tok.encode(prompt(p, DIRECT)) for p in problems]
    for i, ids in enumerate(encoded):
        by_length[len(ids)].append(i)
    predictions: list[str] = [""] * len(problems)
    for indices in by_length.values():
        for lo in range(0, len(indices), batch_size):
            chunk = indices[lo : lo + batch_size]
            x = torch.tensor([encoded[i] for i in chunk], device=device)
            next_ids = model(x)[:, -1].argmax(-1).tolist()
            for i, t in zip(chunk, next_ids):
                predictions[i] = tok.vocab[t]
    return predictions


def direct_accuracy(model: GPT, tok: Tokenizer, problems: list[Problem]) -> float:
    if tok.number_format == "tokens":  # the answer is one token: one forward pass suffices
        predictions = direct_predictions(model, tok, problems)
        return sum(pred == str(p.answer) for pred, p in zip(predictions, problems)) / len(problems)
    texts = completions(model, tok, problems, DIRECT, max_new_tokens=4)  # digits: decode, then parse strictly
    return sum(reward(p, t, DIRECT) for p, t in zip(problems, texts)) / len(problems)


@torch.no_grad()
def completions(model: GPT, tok: Tokenizer, problems: list[Problem], mode: str, greedy: bool = True,
                temperature: float = 1.0, generator: torch.Generator | None = None,
                max_new_tokens: int = 80, batch_size: int = 512) -> list[str]:
    """The model's completion of each problem's `mode` prompt (text up to and including the newline)."""
    texts = []
    for lo in range(0, len(problems), batch_size):
        chunk = problems[lo : lo + batch_size]
        prompts = [tok.encode(prompt(p, mode)) for p in chunk]
        samples = generate(model, prompts, max_new_tokens, stop_id=tok.newline_id, pad_id=tok.pad_id,
                           temperature=temperature, greedy=greedy, generator=generator)
        texts += [tok.decode(row[:n]) for row, n in zip(samples.tokens.tolist(), samples.lengths())]
    return texts


def cot_completions(model: GPT, tok: Tokenizer, problems: list[Problem], **kwargs) -> list[str]:
    """The model's step-by-step completions (see `completions`)."""
    return completions(model, tok, problems, COT, **kwargs)


def cot_accuracy(model: GPT, tok: Tokenizer, problems: list[Problem], **kwargs) -> float:
    texts = cot_completions(model, tok, problems, **kwargs)
    return sum(reward(p, t, COT) for p, t in zip(problems, texts)) / len(problems)


@torch.no_grad()
def evaluate_cot(model: GPT, task: ModularAddition, n_greedy: int, n_sampled: int, k: int, temperature: float,
                 seed: int = 1234) -> dict:
    """REINFORCE's periodic check: greedy accuracy on `n_greedy` held-out problems, and pass@1 and pass@k on
    `n_sampled` of them, k samples each at the RL temperature."""
    tok, test = Tokenizer(task.config.number_format), task.test_set()
    model.eval()
    greedy = cot_completions(model, tok, test[:n_greedy])
    accuracy = float(np.mean([reward(p, t) for p, t in zip(test, greedy)]))
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    repeated = [p for p in test[:n_sampled] for _ in range(k)]
    texts = cot_completions(model, tok, repeated, greedy=False, temperature=temperature, generator=generator)
    hits = np.array([reward(p, t) for p, t in zip(repeated, texts)]).reshape(-1, k)
    model.train()
    return {"test_accuracy": accuracy, "pass@1": float(hits.mean()), f"pass@{k}": float(hits.max(1).mean())}
