"""The supervised stages as library functions: pretraining, direct-answer SFT, CoT warm-up, and the CoT
stages of the instrument controls (controls.py), which differ from the warm-up only in the traces taught.

- Each returns a checkpoint payload (see checkpoint.py); train_sft.py is a thin CLI around them. A later
  stage starts from the pretrained payload and inherits its task and corpus configs, so every stage of a
  model agrees on one train/test split.
- The warm-up stops by accuracy (`AccuracyStop`), so that REINFORCE starts from a known gap.
- `save(payload)` receives a resumable payload (the finished one's keys plus `train_state`) every
  `save_every` steps and on Ctrl-C; passing that payload back as `resume=` continues the run exactly.
"""

import copy
import random
from dataclasses import replace
from typing import Callable

import numpy as np
import torch

from nanocot import distributed
from nanocot.checkpoint import build_model
from nanocot.config import CorpusConfig, TaskConfig, TrainConfig, from_dict, model_config, to_dict
from nanocot.controls import WRITERS
from nanocot.corpus import corpus_text
from nanocot.data import CorpusWindows, collate, reading_example, task_example
from nanocot.metrics import cot_accuracy, direct_accuracy
from nanocot.model import GPT
from nanocot.paraphrase import PARAPHRASERS
from nanocot.task import COT, DIRECT, ModularAddition
from nanocot.tokenizer import Tokenizer
from nanocot.train import train


def _payload(model, size, stage, train_cfg, task_cfg, corpus_cfg, tok, record, history,
             num_examples=0) -> dict:
    """The checkpoint of a stage; `history` lists the stages before it (this one is appended)."""
    steps, seconds, flops = len(record["step"]), record["seconds"], record["flops"]
    return {
        "size": size,
        "stage": stage,
        "model_config": to_dict(model.config),
        "task_config": to_dict(task_cfg),
        "corpus_config": to_dict(corpus_cfg),
        "train_config": to_dict(train_cfg),
        "vocab": list(tok.vocab),
        "params": model.num_params(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "step": steps,
        "num_examples": num_examples,
        "seconds": seconds,
        "flops": flops,
        "record": record,
        "history": history + [{"stage": stage, "steps": steps, "seconds": seconds, "flops": flops}],
    }


def _saver(save, make_payload):
    """Adapt train()'s `save(record, state)` to a payload-level `save(payload)`; None stays None. The
    payload is a deep copy: training goes on mutating the live weights, optimizer state and record."""
    if save is None:
        return None
    return lambda record, state: save(copy.deepcopy({**make_payload(record), "train_state": state}))


class AccuracyStop:
    """The warm-up's stop: end at the first evaluation whose accuracy on training-split problems reaches
    `threshold`, so REINFORCE starts from a known gap wherever chaining steps happens to appear.

    Chaining can appear within a few steps (10% to 85% between two evaluations 25 steps apart: docs/LOG.md,
    2026-12-03), so an evaluation can land far past the threshold. With `bisect`, the stop keeps the weights
    of every step since the last evaluation (taken as each step's batch is drawn, see `watching`; after a
    resume, since the resumed step) and, once an evaluation reaches the threshold, binary-searches those
    steps for one where accuracy crosses it (below at the step before, at or above at this one; accuracy
    need not rise steadily, so an earlier crossing may exist); the run ends there. With `nearest` instead, it
    ends at the evaluation before when that one was nearer the threshold (docs/LOG.md, 2026-11-27). Either
    way the rolled-back steps leave the record's per-step logs and the evaluation that crossed moves to
    record["overshot"]; their tokens, FLOPs and seconds stay counted."""

    def __init__(self, threshold: float, nearest: bool, bisect: bool = False,
                 evaluate: Callable[[GPT], dict] | None = None):
        if bisect and evaluate is None:
            raise ValueError("a bisecting stop needs the evaluation to search with")
        if bisect and nearest:
            raise ValueError("stop by bisection or at the nearest evaluation, not both")
        self.threshold, self.nearest, self.bisect, self.evaluate = threshold, nearest, bisect, evaluate
        self.below: dict | None = None  # the last evaluation under the threshold, with its weights
        self.weights: dict[int, dict] = {}  # with bisect: step -> the weights before that step

    def watching(self, model: GPT, next_batch: Callable):
        """`next_batch` that also keeps the model's weights as each step begins (for `bisect`)."""
        def batch(step: int):
            self.weights[step] = _copy(model)
            return next_batch(step)
        return batch

    def __call__(self, model: GPT, record: dict) -> bool:
        step, accuracy = record["eval"][-1]["step"], record["eval"][-1].get("train_accuracy", 0.0)
        if accuracy < self.threshold:
            weights = _copy(model) if self.nearest else None
            self.below = {"step": step, "accuracy": accuracy, "weights": weights}
            self.weights = {}
            return False
        record["stopped_at"] = step  # steps 0..step-1 are the run
        if self.bisect:
            after = self.below["step"] if self.below is not None else -1
            first = self._first_reaching(model, [s for s in sorted(self.weights) if s > after])
            if first is not None:
                self._end_at(first, model, record, {"step": first, **self.evaluate(model)})
        elif self.nearest and self.below is not None and \
                self.threshold - self.below["accuracy"] < accuracy - self.threshold:
            model.load_state_dict(self.below["weights"])
            self._end_at(self.below["step"], model, record, None)
        return True

    def _first_reaching(self, model: GPT, steps: list[int]) -> int | None:
        """Binary search over `steps` for one whose weights reach the threshold after one that does not (the
        evaluation after them did); its weights are left loaded. None (and the current weights kept) if none
        of them does."""
        current, lo, hi = _copy(model), 0, len(steps)
        while lo < hi:
            mid = (lo + hi) // 2
            model.load_state_dict(self.weights[steps[mid]])
            if self.evaluate(model).get("train_accuracy", 0.0) >= self.threshold:
                hi = mid
            else:
                lo = mid + 1
        model.load_state_dict(self.weights[steps[lo]] if lo < len(steps) else current)
        return steps[lo] if lo < len(steps) else None

    @staticmethod
    def _end_at(step: int, model: GPT, record: dict, evaluation: dict | None) -> None:
        kept = sum(s < step for s in record["step"])
        for key in ("step", "loss", "token_accuracy"):
            del record[key][kept:]
        record["stopped_at"] = step
        record["overshot"] = record["eval"].pop()  # the evaluation that crossed the threshold
        if evaluation is not None:
            record["eval"].append(evaluation)


def _copy(model: GPT) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def pretrain(size: str, train_cfg: TrainConfig, task_cfg: TaskConfig, corpus_cfg: CorpusConfig, device,
             resume: dict | None = None, save=None, save_every: int = 0) -> dict:
    """Next-token pretraining on the toy corpus, loss on every token."""
    tok = Tokenizer(task_cfg.number_format)
    torch.manual_seed(train_cfg.seed)
    model = GPT(model_config(size, len(tok))).to(device)
    if resume is not None:
        model.load_state_dict(resume["state_dict"])
    windows = CorpusWindows(tok, corpus_text(corpus_cfg, task_cfg), model.config.block_size)
    rng = np.random.default_rng(train_cfg.seed)
    make = lambda record: _payload(model, size, "pretrain", train_cfg, task_cfg, corpus_cfg, tok, record, [])
    record = train(model, train_cfg, lambda step: windows.batch(rng, train_cfg.batch_size, device),
                   desc=f"{size} pretrain", rng=rng, resume=resume["train_state"] if resume else None,
                   save=_saver(save, make), save_every=save_every)
    record["corpus_tokens"] = len(windows.tokens)
    return make(record)


def finetune(pretrained: dict, stage: str, train_cfg: TrainConfig, device, num_examples: int = 0,
             resume: dict | None = None, save=None, save_every: int = 0) -> dict:
    """Direct-answer SFT (`direct`), CoT warm-up on reference traces (`warmup`) or a control's CoT stage
    (`ignore`: controls.WRITERS) from a pretrained payload (or a direct one: any finished earlier stage).

    num_examples > 0 draws a fixed pool of that many training problems (a small warm-up set); 0 draws
    fresh problems every step. To resume, pass the saved resumable payload as `resume` (it carries the
    pretrained payload's configs and history too, so `pretrained` may be the same payload).
    """
    task_cfg = from_dict(TaskConfig, pretrained["task_config"])
    tok, task = Tokenizer(task_cfg.number_format), ModularAddition(task_cfg)
    mode = DIRECT if stage == "direct" else COT
    model = build_model(resume or pretrained, device)
    history = resume["history"][:-1] if resume is not None else pretrained["history"]  # the stages before
    rng = np.random.default_rng(train_cfg.seed)
    next_batch = _task_batches(task, tok, mode, train_cfg, num_examples, rng, model.config.block_size, device,
                               WRITERS.get(stage))
    corpus_cfg = from_dict(CorpusConfig, pretrained["corpus_config"])
    size = pretrained["size"]
    make = lambda record: _payload(model, size, stage, train_cfg, task_cfg, corpus_cfg, tok, record, history,
                                   num_examples)
    evaluate = _evaluator(task, tok, mode)
    stop = None
    if train_cfg.stop_accuracy:
        stop = AccuracyStop(train_cfg.stop_accuracy, train_cfg.stop_nearest, train_cfg.stop_bisect, evaluate)
        if train_cfg.stop_bisect:
            next_batch = stop.watching(model, next_batch)
    record = train(model, train_cfg, next_batch, evaluate, stop, desc=f"{size} {stage}",
                   rng=rng, resume=resume["train_state"] if resume else None, save=_saver(save, make),
                   save_every=save_every)
    record["num_examples"] = num_examples
    return make(record)


def _task_batches(task: ModularAddition, tok: Tokenizer, mode: str, train_cfg: TrainConfig, num_examples: int,
                  rng: np.random.Generator, block_size: int, device, write=None):
    """`next_batch(step)` for a task stage, drawing from `rng` (so a resumed run replays it exactly). A share
    `paraphrase_fraction` of the warm-up's examples teach reading a paraphrased trace (data.py), and a share
    `balanced_steps` of its trace examples are single steps that give the rare facts their practice
    (ModularAddition.sample_balanced_steps). `write`
    (problem, rng) -> completion replaces the reference completion (a control's traces)."""
    # this stage's operand-count mix (same split: which problems are test problems does not depend on it)
    batch_task = task if train_cfg.easier_fraction is None else \
        ModularAddition(replace(task.config, easier_fraction=train_cfg.easier_fraction))
    pool = batch_task.sample_train(rng, num_examples) if num_examples > 0 else None  # drawn again on resume
    readers = [PARAPHRASERS[name] for name in train_cfg.read_paraphrasers.split(",")] \
        if mode == COT and train_cfg.paraphrase_fraction > 0 else []

    def example(problem) -> tuple[bool, tuple[list[int], list[int]]]:
        """(is it a reading example?, the example). Direct-answer rehearsals are short, so they are collated
        with the reading examples' group, apart from the traces."""
        if mode == COT and train_cfg.direct_fraction > 0 and rng.random() < train_cfg.direct_fraction:
            return True, task_example(tok, problem, DIRECT)
        if readers and rng.random() < train_cfg.paraphrase_fraction:
            paraphraser = readers[int(rng.integers(len(readers)))]
            wording = random.Random(int(rng.integers(2**31)))
            from_end = train_cfg.read_from_end > 0 and rng.random() < train_cfg.read_from_end
            return True, reading_example(tok, problem, paraphraser, wording, block_size, from_end)
        if mode == COT and train_cfg.balanced_steps > 0 and rng.random() < train_cfg.balanced_steps:
            return False, task_example(tok, task.sample_balanced_steps(rng, 1)[0], mode)
        return False, task_example(tok, problem, mode, write(problem, rng) if write else None)

    def next_batch(step: int):
        if pool is not None:
            problems = [pool[i] for i in rng.integers(0, len(pool), size=train_cfg.batch_size)]
        else:
            problems = batch_task.sample_train(rng, train_cfg.batch_size)
        examples = [example(p) for p in problems]
        # reading examples (paraphrased, often in words) run to ~90 tokens where a trace is ~40: collated
        # apart, the writing rows are not padded to their length
        groups = [[e for reading, e in examples if reading == kind] for kind in (False, True)]
        parts = [collate(group, tok.pad_id, device) for group in groups if group]
        return parts if len(parts) > 1 else parts[0]

    return next_batch


def _evaluator(task: ModularAddition, tok: Tokenizer, mode: str):
    """Held-out and training-split accuracy (the stop reads the training split, so the test set never
    steers training): greedy first token for direct answers, greedy traces on 300 problems for CoT."""
    test, train_sample = task.test_set(), task.train_sample(1000)
    if mode == COT:
        test, train_sample = test[:300], train_sample[:300]
    accuracy = direct_accuracy if mode == DIRECT else cot_accuracy

    def evaluate(m: GPT) -> dict:
        return {"test_accuracy": _over_processes(accuracy, m, tok, test),
                "train_accuracy": _over_processes(accuracy, m, tok, train_sample)}

    return evaluate


def _over_processes(accuracy, model: GPT, tok: Tokenizer, problems: list) -> float:
    """`accuracy(model, tok, problems)`, each process scoring its share under torchrun (distributed.py)."""
    if distributed.WORLD.size == 1:
        return accuracy(model, tok, problems)
    mine = distributed.shard(problems)
    correct = round(accuracy(model, tok, mine) * len(mine)) if mine else 0
    return distributed.sum_over_ranks([correct])[0] / len(problems)
