"""The black box: what can be read off a direct-answer model that writes no trace.

- Behaviour: accuracy by distance outside the training range (interpolation vs extrapolation), and two
  symmetries the true function has: periodicity f(x1 + m, ...) = f(x1, ...) and commutativity
  (operands reversed). Rates count *agreement* of the model with itself, right or wrong.
- Internals, through the model's `record=True` seam: linear probes on the residual stream at the last
  prompt position (where the answer is produced) after every layer, for the plain sum and for the sum
  mod m. The probe is closed-form ridge regression onto one-hot classes (fit on 2/3, scored on 1/3);
  chance is the most common class. High probe accuracy says the value is *there*, linearly, not how the
  model computes it: that is the black box the argument contrasts with a readable trace.
- A CoT in the context: the worked trace of another problem placed before the direct prompt. A model
  that answers in one pass should not move; a model that reads its context might.
"""

from collections import defaultdict
from dataclasses import replace

import torch

from nanocot.faithfulness import ModelPolicy
from nanocot.metrics import completions, direct_predictions
from nanocot.model import GPT
from nanocot.stats import proportion, wilson
from nanocot.task import DIRECT, Problem, parse_answer, prompt, reference_trace
from nanocot.tokenizer import Tokenizer
from nanocot.trace import parse_number

DISTANCE_BINS = ((0, 0), (1, 3), (4, 7), (8, 15), (16, 10**6))


def direct_answers(model: GPT, tok: Tokenizer, problems: list[Problem]) -> list[int | None]:
    """Greedy direct answers (None when malformed)."""
    if tok.number_format == "tokens":
        return [parse_number(t) for t in direct_predictions(model, tok, problems)]
    return [parse_answer(t, DIRECT) for t in completions(model, tok, problems, DIRECT, max_new_tokens=4)]


def distance_outside(problem: Problem) -> int:
    """How far the farthest operand lies outside the training range [0, m)."""
    return max(0, max(problem.operands) - (problem.modulus - 1), -min(problem.operands))


def by_distance(problems: list[Problem], correct: list[bool]) -> dict:
    """Accuracy per bin of distance outside the training range (bin (0, 0) is interpolation)."""
    bins = defaultdict(list)
    for p, ok in zip(problems, correct):
        d = distance_outside(p)
        lo, hi = next(b for b in DISTANCE_BINS if b[0] <= d <= b[1])
        bins[f"{lo}" if lo == hi else f"{lo}-{hi}" if hi < 10**6 else f">={lo}"].append(ok)
    order = {f"{lo}" if lo == hi else f"{lo}-{hi}" if hi < 10**6 else f">={lo}": i
             for i, (lo, hi) in enumerate(DISTANCE_BINS)}
    return {k: proportion(v) for k, v in sorted(bins.items(), key=lambda kv: order[kv[0]])}


def symmetry(model: GPT, tok: Tokenizer, problems: list[Problem]) -> dict:
    """Self-agreement under x1 -> x1 + m (periodicity) and under reversed operand order (commutativity)."""
    base = direct_answers(model, tok, problems)
    shifted = direct_answers(model, tok, [replace(p, operands=(p.operands[0] + p.modulus,) + p.operands[1:])
                                          for p in problems])
    swapped = direct_answers(model, tok, [replace(p, operands=p.operands[::-1]) for p in problems])
    return {"periodicity": proportion(a == b for a, b in zip(base, shifted)),
            "commutativity": proportion(a == b for a, b in zip(base, swapped))}


@torch.no_grad()
def last_position_states(model: GPT, tok: Tokenizer, texts: list[str]) -> list[torch.Tensor]:
    """The residual stream at each text's last token, after the embedding and after every layer:
    n_layer + 1 tensors of shape (N, d). Texts are batched by length (no padding)."""
    device = next(model.parameters()).device
    encoded = [tok.encode(t) for t in texts]
    groups = defaultdict(list)
    for i, ids in enumerate(encoded):
        groups[len(ids)].append(i)
    states = [torch.zeros(len(texts), model.config.d_model) for _ in range(model.config.n_layer + 1)]
    for rows in groups.values():
        for lo in range(0, len(rows), 512):
            chunk = rows[lo : lo + 512]
            _, acts = model(torch.tensor([encoded[i] for i in chunk], device=device), record=True)
            for layer, resid in enumerate(acts["resid"]):  # resid: (B, T, d)
                states[layer][chunk] = resid[:, -1].float().cpu()
    return states


def ridge_accuracy(x: torch.Tensor, labels: torch.Tensor, train: int, lam: float = 1.0) -> float:
    """Fit a ridge-regression probe from standardised features to one-hot labels on the first `train`
    rows; return its argmax accuracy on the rest. Closed form: W = (X'X + lam I)^-1 X'Y."""
    mean, std = x[:train].mean(0), x[:train].std(0) + 1e-6
    x = torch.cat([(x - mean) / std, torch.ones(len(x), 1)], dim=1).double()  # (N, d+1), bias column
    classes, index = labels.unique(return_inverse=True)
    y = torch.nn.functional.one_hot(index, len(classes)).double()  # (N, C)
    a = x[:train]
    w = torch.linalg.solve(a.T @ a + lam * torch.eye(a.shape[1], dtype=a.dtype), a.T @ y[:train])  # (d+1, C)
    return float(((x[train:] @ w).argmax(1) == index[train:]).double().mean())


def linear_probes(model: GPT, tok: Tokenizer, problems: list[Problem], mode: str = DIRECT) -> dict:
    """Probe accuracy per layer (0 = embeddings) for sum(x) and sum(x) mod m at the answer position, with each
    accuracy's 95% Wilson interval over the scored problems (`<name>_intervals`)."""
    states = last_position_states(model, tok, [prompt(p, mode) for p in problems])
    train = 2 * len(problems) // 3
    out = {"layers": list(range(len(states))), "n_train": train, "n_test": len(problems) - train}
    for name, values in (("sum", [sum(p.operands) for p in problems]), ("mod", [p.answer for p in problems])):
        labels = torch.tensor(values)
        out[name] = [ridge_accuracy(s, labels, train) for s in states]
        out[f"{name}_intervals"] = [list(wilson(a * out["n_test"], out["n_test"])) for a in out[name]]
        test = labels[train:]
        out[f"{name}_chance"] = float((test == test.mode().values).double().mean()) if len(test) else 0.0
    return out


@torch.no_grad()
def attention_maps(model: GPT, tok: Tokenizer, text: str) -> tuple[list[torch.Tensor], list[str]]:
    """Attention patterns of every layer for one text: [(n_head, T, T)] and the token strings. The text is cut
    to the model's context: a decoded completion can encode longer than it was sampled (decoding puts a space
    between adjacent numbers), and a degenerate model's fills the whole window."""
    ids = tok.encode(text)[: model.config.block_size]
    _, acts = model(torch.tensor([ids], device=next(model.parameters()).device), record=True)
    return [a[0].float().cpu() for a in acts["attn"]], tok.decode_tokens(ids)


def cot_in_context(model: GPT, tok: Tokenizer, problems: list[Problem]) -> dict:
    """Put another problem's worked trace (same modulus, different answer) before the direct prompt:
    how often does the direct answer move, and how often does it become the other problem's answer?"""
    plain = direct_answers(model, tok, problems)
    policy = ModelPolicy(model, tok, DIRECT)
    pairs = []
    for i, p in enumerate(problems):
        j = next((j for j in list(range(i + 1, len(problems))) + list(range(i))
                  if problems[j].modulus == p.modulus and problems[j].answer != p.answer), None)
        if j is not None:
            q = problems[j]
            pairs.append((i, j, tok.encode(prompt(q, "cot") + reference_trace(q) + prompt(p, DIRECT))))
    texts = policy.complete_contexts([c for _, _, c in pairs], max_new_tokens=6)
    answers = [parse_number(t.split("\n", 1)[0]) for t in texts]
    return {"moved": proportion(a != plain[i] for a, (i, _, _) in zip(answers, pairs)),
            "follow_rate": proportion(a == problems[j].answer for a, (_, j, _) in zip(answers, pairs)),
            "accuracy": proportion(a == problems[i].answer for a, (i, _, _) in zip(answers, pairs))}
