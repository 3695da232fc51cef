"""Training inputs and the loop: loss masks, collate, corpus windows, lr schedule, masked loss,
pretraining."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_model

from nanocot.config import CorpusConfig, TaskConfig, TrainConfig
from nanocot.corpus import corpus_text
from nanocot.data import CorpusWindows, collate, task_example
from nanocot.fast import cpu as fast_cpu
from nanocot.sft import AccuracyStop
from nanocot.task import COT, DIRECT, ModularAddition, Problem, prompt, reference_trace
from nanocot.train import backward, lr_at, masked_loss

PROBLEM = Problem((8, 7, 12, 5), 21)

# ------------------------------------------------------------------------------------------------ data


def test_direct_mask_covers_exactly_the_answer(tok):
    """Direct SFT must learn the answer and the newline that stops it, never to predict the prompt."""
    ids, mask = task_example(tok, PROBLEM, DIRECT)
    assert len(ids) == len(mask)
    assert sum(mask) == 2 and mask[-2:] == [1, 1]
    assert ids[-2:] == [tok.number_id(11), tok.newline_id]
    assert tok.decode(ids[: -2]) == prompt(PROBLEM, DIRECT)
    assert all(m == 0 for m in mask[:-2])


def test_cot_mask_covers_exactly_trace_answer_newline(tok):
    ids, mask = task_example(tok, PROBLEM, COT)
    n_prompt = len(tok.encode(prompt(PROBLEM, COT)))
    assert mask == [0] * n_prompt + [1] * (len(ids) - n_prompt)
    assert tok.decode(ids[:n_prompt]) == prompt(PROBLEM, COT)
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == reference_trace(PROBLEM) + "\n"


def test_collate_shifts_and_pads(tok):
    """Position t predicts token t+1 with token t+1's mask; padding carries no loss."""
    short = task_example(tok, Problem((1, 2), 10), DIRECT)
    long = task_example(tok, PROBLEM, COT)
    x, y, mask = collate([short, long], tok.pad_id, "cpu")
    T = len(long[0]) - 1
    assert x.shape == y.shape == mask.shape == (2, T)
    for row, (ids, m) in enumerate([short, long]):
        n = len(ids) - 1
        assert x[row, :n].tolist() == ids[:-1]
        assert y[row, :n].tolist() == ids[1:]
        assert mask[row, :n].tolist() == [float(v) for v in m[1:]]
        assert torch.all(x[row, n:] == tok.pad_id) and torch.all(y[row, n:] == tok.pad_id)
        assert torch.all(mask[row, n:] == 0)
    assert x.dtype == y.dtype == torch.long and mask.dtype == torch.float32


def test_corpus_windows_start_at_line_boundaries(tok):
    """Each pretraining window starts with a newline, exactly as every task prompt does."""
    text = corpus_text(CorpusConfig(num_lines=300), TaskConfig())
    windows = CorpusWindows(tok, text, seq_len=40)
    x, y, mask = windows.batch(np.random.default_rng(0), 16, "cpu")
    assert x.shape == y.shape == mask.shape == (16, 40)
    assert torch.all(x[:, 0] == tok.newline_id)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.all(mask == 1)
    with pytest.raises(ValueError):
        CorpusWindows(tok, "\n1+2=3", seq_len=40)


# ------------------------------------------------------------------------------------- lr and the loss


def test_lr_schedule_shape():
    """Linear warm-up to the peak, then a monotone cosine decay to lr * min_lr_ratio at the last step."""
    cfg = TrainConfig(steps=200, lr=1e-3, warmup_steps=20, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps + 1)]
    assert lrs[0] == pytest.approx(cfg.lr / cfg.warmup_steps)
    warm = lrs[: cfg.warmup_steps]
    assert all(b > a for a, b in zip(warm, warm[1:]))
    assert np.allclose(np.diff(warm), cfg.lr / cfg.warmup_steps)  # linear
    assert lrs[cfg.warmup_steps - 1] == pytest.approx(cfg.lr)
    assert lrs[cfg.warmup_steps] == pytest.approx(cfg.lr)
    decay = lrs[cfg.warmup_steps :]
    assert all(b < a for a, b in zip(decay, decay[1:]))
    assert lrs[cfg.steps] == pytest.approx(cfg.lr * cfg.min_lr_ratio)
    mid = cfg.warmup_steps + (cfg.steps - cfg.warmup_steps) // 2
    assert lrs[mid] == pytest.approx(cfg.lr * (0.1 + 0.9 * 0.5))  # cosine: halfway is the mean
    quarter = cfg.warmup_steps + (cfg.steps - cfg.warmup_steps) // 4  # and a quarter of the way is not linear
    assert lrs[quarter] == pytest.approx(cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))))
    assert lr_at(10 * cfg.steps, cfg) == pytest.approx(cfg.lr * cfg.min_lr_ratio)  # never below the floor
    assert min(lrs) > 0 and max(lrs) <= cfg.lr + 1e-12


def test_lr_without_warmup():
    cfg = TrainConfig(steps=10, lr=1.0, warmup_steps=0, min_lr_ratio=0.0)
    assert lr_at(0, cfg) == pytest.approx(1.0)
    assert lr_at(5, cfg) == pytest.approx(0.5)
    assert lr_at(10, cfg) == pytest.approx(0.0, abs=1e-12)


@torch.no_grad()
def test_masked_loss_ignores_masked_positions(tok):
    """Prompt tokens and padding must not contribute: changing their targets must not move the loss."""
    model = make_model(len(tok), std=0.1)
    examples = [task_example(tok, PROBLEM, COT), task_example(tok, Problem((3, 4), 12), DIRECT)]
    x, y, mask = collate(examples, tok.pad_id, "cpu")
    loss, acc = masked_loss(model, (x, y, mask))
    logits = model(x)
    per_token = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(mask)
    assert loss.item() == pytest.approx((per_token[mask == 1]).mean().item(), rel=1e-5)

    scrambled = y.clone()
    scrambled[mask == 0] = (scrambled[mask == 0] + 17) % len(tok)
    assert torch.allclose(masked_loss(model, (x, scrambled, mask))[0], loss)

    changed = y.clone()
    changed[mask == 1] = (changed[mask == 1] + 17) % len(tok)
    assert not torch.allclose(masked_loss(model, (x, changed, mask))[0], loss)
    assert 0.0 <= acc.item() <= 1.0


def test_masked_loss_on_the_loss_positions_only_gives_the_full_gradient(tok):
    """On a CPU the fast masked_loss unembeds only the masked positions; the loss and every gradient must
    equal the plain formula over all positions (mean of the masked per-token losses)."""
    examples = [task_example(tok, PROBLEM, DIRECT), task_example(tok, Problem((3, 4, 9), 12), COT)]
    x, y, mask = collate(examples, tok.pad_id, "cpu")
    assert 0 < mask.sum() < mask.numel(), "a partial mask takes the selective path"
    model = make_model(len(tok), std=0.1)
    loss, _ = fast_cpu.masked_loss(model, (x, y, mask))
    loss.backward()
    selective = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    per_token = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="none").view_as(mask)
    full = (per_token * mask).sum() / mask.sum()
    full.backward()
    assert loss.item() == pytest.approx(full.item(), rel=1e-6)
    for a, p in zip(selective, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-7), "same gradient through the selected positions"
    for loss_fn in (masked_loss, fast_cpu.masked_loss):
        empty, accuracy = loss_fn(model, (x, y, torch.zeros_like(mask)))
        assert empty.item() == 0.0 and accuracy.item() == 0.0
        empty.backward()  # a batch without loss tokens is a zero step, not an error


@pytest.mark.parametrize("loss_fn", [masked_loss, fast_cpu.masked_loss], ids=["plain", "fast"])
def test_masked_loss_token_accuracy(tok, loss_fn):
    model = make_model(len(tok), std=0.1)
    x = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        pred = model(x).argmax(-1)
    right = pred.clone()
    wrong = (pred + 1) % len(tok)
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    mixed = torch.where(torch.tensor([[True, False, False]]), right, wrong)
    assert loss_fn(model, (x, right, mask))[1].item() == pytest.approx(1.0)
    assert loss_fn(model, (x, mixed, mask))[1].item() == pytest.approx(0.5)


def test_masked_loss_with_every_token_counted_equals_the_masked_formula(tok):
    """On a CPU an all-ones mask (pretraining) takes a plain mean cross-entropy; loss, token accuracy
    (argmax == target) and every gradient must equal the masked formula's."""
    x = torch.randint(1, len(tok), (3, 20), generator=torch.Generator().manual_seed(0))
    y = torch.randint(1, len(tok), (3, 20), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 20)
    model = make_model(len(tok), std=0.5)
    with torch.no_grad():
        y[0, :10] = model(x)[0, :10].argmax(-1)  # some right predictions, so the accuracy is not 0
    loss, accuracy = fast_cpu.masked_loss(model, (x, y, mask))
    loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits = model(x)
    per_token = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(mask)
    full = (per_token * mask).sum() / mask.sum()
    full.backward()
    assert loss.item() == pytest.approx(full.item(), rel=1e-6)
    assert (accuracy.item() == pytest.approx((logits.argmax(-1) == y).float().mean().item())
            and accuracy.item() >= 10 / 60)
    for a, p in zip(plain, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-7)


def test_micro_batches_give_the_one_batch_gradient(tok):
    """Rows collated apart (the warm-up's long reading examples) must train exactly like one padded batch:
    same loss, accuracy and gradient, each token weighted once over the whole step."""
    model = make_model(len(tok), std=0.1)
    short = [task_example(tok, PROBLEM, DIRECT), task_example(tok, Problem((3, 4), 12), COT)]
    long = [task_example(tok, Problem((9, 9, 9, 9), 11), COT)]
    one_loss, one_acc = masked_loss(model, collate(short + long, tok.pad_id, "cpu"))
    one_loss.backward()
    one_grads = [p.grad.clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # backward() zeroes its gradients first
    parts = [collate(short, tok.pad_id, "cpu"), collate(long, tok.pad_id, "cpu")]
    # clipping at inf scales by exactly 1
    loss, acc, _ = backward(model, optimizer, parts, grad_clip=math.inf)
    assert loss.item() == pytest.approx(one_loss.item(), rel=1e-5)
    assert acc.item() == pytest.approx(one_acc.item(), rel=1e-5)
    for p, g in zip(model.parameters(), one_grads):
        assert torch.allclose(p.grad, g, atol=1e-6)


def test_padding_a_batch_for_a_cuda_graph_changes_neither_loss_nor_gradient(tok):
    """cuda_graphs.pad_batch right-pads each batch to a fixed width so one recorded graph fits many batches;
    under the causal mask and a zero loss mask the extra positions must change nothing. Checked on the path
    a GPU takes (the plain loss: logits at every position, not only the masked ones)."""
    from nanocot.fast import cuda_graphs

    model = make_model(len(tok), std=0.1)
    batch = collate([task_example(tok, PROBLEM, DIRECT), task_example(tok, Problem((9, 9, 9, 9), 11), COT)],
                    tok.pad_id, "cpu")
    padded = cuda_graphs.pad_batch(batch, multiple=16)
    assert padded[0].shape[1] % 16 == 0 and padded[0].shape[1] > batch[0].shape[1]
    assert (torch.equal(padded[0][:, : batch[0].shape[1]], batch[0])
            and padded[2][:, batch[0].shape[1]:].sum() == 0)
    results = []
    for b in (batch, padded):
        model.zero_grad(set_to_none=True)
        loss, accuracy = masked_loss(model, b)
        loss.backward()
        results.append((loss.item(), accuracy.item(), [p.grad.clone() for p in model.parameters()]))
    (loss_a, acc_a, grads_a), (loss_b, acc_b, grads_b) = results
    assert loss_b == pytest.approx(loss_a, rel=1e-6) and acc_b == acc_a
    for a, b in zip(grads_a, grads_b):
        assert torch.allclose(a, b, atol=1e-7)
    assert cuda_graphs.pad_batch(padded, multiple=16) is padded  # already a multiple: untouched
    width = batch[0].shape[1]
    # never past the context
    assert cuda_graphs.pad_batch(batch, multiple=16, limit=width + 1)[0].shape[1] == width + 1


# ------------------------------------------------------------------------------------------ pretraining


def test_tiny_pretraining_lowers_the_loss():
    """End to end through corpus, windows, optimizer and schedule: the loss must actually go down."""
    from nanocot.sft import pretrain

    cfg = TrainConfig(steps=60, batch_size=16, lr=3e-3, warmup_steps=10, eval_every=0)
    payload = pretrain("tiny", cfg, TaskConfig(), CorpusConfig(num_lines=2000), "cpu")
    losses = payload["record"]["loss"]
    assert len(losses) == 60 and all(math.isfinite(v) for v in losses)
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < first - 1.0, (first, last)
    assert payload["record"]["tokens"] == 60 * 16 * payload["model_config"]["block_size"]
    assert payload["size"] == "tiny" and payload["stage"] == "pretrain"
    assert [h["stage"] for h in payload["history"]] == ["pretrain"]


@pytest.mark.parametrize("share, expect_fewer", [(1.0, True), (0.0, False)])
def test_stage_easier_fraction_sets_the_operand_mix(tiny_pretrain_payload, monkeypatch, share, expect_fewer):
    """A warm-up's own `easier_fraction` decides how many of its problems have fewer operands (the task's
    0.5 is ignored): 1.0 -> every problem has fewer than k operands, 0.0 -> every problem has k."""
    import nanocot.sft as sft

    seen = []
    real = sft.task_example
    monkeypatch.setattr(sft, "task_example",
                        lambda tok, p, mode, text=None: seen.append(p) or real(tok, p, mode, text))
    cfg = TrainConfig(steps=2, batch_size=16, lr=1e-3, warmup_steps=1, eval_every=0, easier_fraction=share)
    payload = sft.finetune(tiny_pretrain_payload, "warmup", cfg, "cpu")
    k = payload["task_config"]["num_operands"]
    assert len(seen) == 32
    assert all((len(p.operands) < k) == expect_fewer for p in seen)
    # the task (and its split) is unchanged
    assert payload["task_config"] == tiny_pretrain_payload["task_config"]


@pytest.mark.parametrize("name", ["reword", "words", "swap"])
def test_reading_example_trains_only_the_answer_after_a_faithful_paraphrase(tok, name):
    """A reading example's context is the reference trace in other words (it executes to the same steps) and
    the loss covers exactly "answer\\n": the model learns to read paraphrases, never to write them."""
    import random

    from nanocot.data import reading_example
    from nanocot.paraphrase import PARAPHRASERS, canonicalize
    from nanocot.trace import parse_trace

    for problem in [PROBLEM, Problem((28, 27, 26, 28), 29), Problem((3, 4), 10)]:
        ids, mask = reading_example(tok, problem, PARAPHRASERS[name], random.Random(1), block_size=96)
        n_prompt = len(tok.encode(prompt(problem, COT)))
        assert len(ids) == len(mask) and len(ids) - 1 <= 96, "must fit the context after the shift"
        assert mask == [0] * (len(ids) - 2) + [1, 1]
        assert ids[-2:] == [tok.number_id(problem.answer), tok.newline_id]
        assert tok.decode(ids[:n_prompt]) == prompt(problem, COT)
        body = tok.decode(ids[n_prompt:-2])
        if problem == PROBLEM:  # (a paraphrase may be the identity by chance, e.g. swapping 26+26)
            assert body != reference_trace(problem).split(";")[0] + ";", (
                "the trace must actually be paraphrased")
        said = parse_trace(canonicalize(body) + str(problem.answer)).steps
        meant = parse_trace(reference_trace(problem)).steps
        assert [(sorted((s.left, s.right)), s.total, s.reductions) for s in said] == \
               [(sorted((s.left, s.right)), s.total, s.reductions) for s in meant]


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_warmup_paraphrase_fraction_mixes_reading_examples(tiny_pretrain_payload, monkeypatch, fraction):
    """`paraphrase_fraction` of a warm-up's examples are reading examples (loss on "answer\\n" only), the
    rest are ordinary trace-writing examples; 0 draws none (and leaves the data stream as it was)."""
    import nanocot.sft as sft

    kinds = []
    real_task, real_reading = sft.task_example, sft.reading_example
    monkeypatch.setattr(sft, "task_example", lambda *a: kinds.append("write") or real_task(*a))
    monkeypatch.setattr(sft, "reading_example", lambda *a: kinds.append("read") or real_reading(*a))
    cfg = TrainConfig(steps=4, batch_size=32, lr=1e-3, warmup_steps=1, eval_every=0,
                      paraphrase_fraction=fraction)
    sft.finetune(tiny_pretrain_payload, "warmup", cfg, "cpu")
    share = kinds.count("read") / len(kinds)
    assert len(kinds) == 128
    assert share == fraction if fraction in (0.0, 1.0) else 0.35 < share < 0.65


def test_reading_example_from_end_spells_the_last_step(tok):
    """A reading example paraphrased from the end puts the value the answer repeats in words (from the front,
    a translation that does not fit the context leaves it in digits, so the answer could be copied without
    reading). The context here is short (40 tokens), so the whole translated trace does not fit."""
    import random

    from nanocot.data import reading_example
    from nanocot.paraphrase import PARAPHRASERS, canonicalize

    problem = Problem((13, 18, 14, 4), 21)
    reference = reference_trace(problem).split(";")[0] + ";"
    n_prompt = len(tok.encode(prompt(problem, COT)))
    bodies = {}
    for from_end in (False, True):
        ids, _ = reading_example(tok, problem, PARAPHRASERS["words"], random.Random(1), 40, from_end=from_end)
        bodies[from_end] = tok.decode(ids[n_prompt:-2])
        assert canonicalize(bodies[from_end]) == reference
    assert (bodies[False].endswith(reference.split(",")[-1])
            and bodies[True].startswith(reference.split(",")[0] + ","))
    assert not bodies[True].endswith(reference.split(",")[-1])


def test_stop_accuracy_ends_the_stage_at_the_first_evaluation_that_reaches_it():
    """A warm-up with --stop-accuracy stops before the step whose evaluation first reached the threshold on
    training-split problems (never the test set's): the steps before it are the run, and no later step or
    evaluation happens."""
    from nanocot.tokenizer import Tokenizer
    from nanocot.train import train

    model = make_model(len(Tokenizer()), std=0.1)
    accuracies = iter([0.1, 0.3, 0.6, 0.9, 0.95])
    batch = collate([task_example(Tokenizer(), PROBLEM, DIRECT)] * 2, 0, "cpu")
    config = TrainConfig(steps=20, batch_size=2, eval_every=3, warmup_steps=1, stop_accuracy=0.5)
    record = train(model, config, lambda step: batch, stop=AccuracyStop(0.5, nearest=False),
                   evaluate=lambda m: {"test_accuracy": 1.0, "train_accuracy": next(accuracies)})
    assert [e["step"] for e in record["eval"]] == [0, 3, 6] and record["stopped_at"] == 6
    assert record["step"] == list(range(6))
    plain = TrainConfig(steps=4, batch_size=2, eval_every=2, warmup_steps=1)  # no stop: never stops early
    unstopped = train(make_model(len(Tokenizer()), std=0.1), plain, lambda step: batch,
                      evaluate=lambda m: {"train_accuracy": 1.0})
    assert "stopped_at" not in unstopped and [e["step"] for e in unstopped["eval"]] == [0, 2, 4]


@pytest.mark.parametrize("last, nearest, stopped_at", [(0.95, True, 3), (0.72, True, 6), (0.95, False, 6)])
def test_stop_nearest_returns_to_the_evaluation_before_when_it_was_nearer(last, nearest, stopped_at):
    """With stop_nearest, the evaluation that first reaches the threshold (0.7) overshot it by more than the
    one before was under it (0.95 vs 0.6): the stage ends at the one before, with that step's weights,
    per-step logs and last evaluation, and keeps the later evaluation as "overshot". At 0.72 it was the nearer
    and the stage ends there; without stop_nearest (the default) it always ends at the first evaluation
    reaching the threshold."""
    from nanocot.tokenizer import Tokenizer
    from nanocot.train import train

    model = make_model(len(Tokenizer()), std=0.1)
    accuracies = iter([0.1, 0.6, last])
    seen = {}

    def evaluate(m):
        # the weights at steps 0, 3, 6
        seen[len(seen) * 3] = {k: v.clone() for k, v in m.state_dict().items()}
        return {"train_accuracy": next(accuracies)}

    batch = collate([task_example(Tokenizer(), PROBLEM, DIRECT)] * 2, 0, "cpu")
    config = TrainConfig(steps=20, batch_size=2, lr=1e-2, eval_every=3, warmup_steps=1, stop_accuracy=0.7,
                         stop_nearest=nearest)
    record = train(model, config, lambda step: batch, evaluate=evaluate, stop=AccuracyStop(0.7, nearest))
    assert (record["stopped_at"] == stopped_at
            and [e["step"] for e in record["eval"]] == list(range(0, stopped_at + 1, 3)))
    assert record["step"] == list(range(stopped_at)) and len(record["loss"]) == stopped_at
    assert not all(torch.equal(seen[3][k], seen[6][k]) for k in seen[3]), "the test needs the weights to move"
    for k, v in model.state_dict().items():
        assert torch.equal(v, seen[stopped_at][k]), k
    assert record.get("overshot") == ({"step": 6, "train_accuracy": 0.95} if stopped_at == 3 else None)


@pytest.mark.parametrize("jump_at, stopped_at", [(13, 13), (11, 11), (15, 15)])
def test_stop_bisect_finds_the_first_step_that_reaches_the_threshold(jump_at, stopped_at):
    """Chaining can jump past the threshold between two evaluations: with bisect the stop searches the steps
    since the evaluation before (5 steps apart here) for the first whose weights reach it, and the stage ends
    there with that step's weights, per-step logs and a fresh evaluation; the evaluation that crossed is kept
    as "overshot". When the jump comes exactly at an evaluation, it ends there, as without bisect."""
    from nanocot.tokenizer import Tokenizer
    from nanocot.train import train

    model = make_model(len(Tokenizer()), std=0.1)
    batch = collate([task_example(Tokenizer(), PROBLEM, DIRECT)] * 2, 0, "cpu")
    seen = {}  # step -> the weights as that step begins

    def next_batch(step):
        seen[step] = {k: v.clone() for k, v in model.state_dict().items()}
        return batch

    def step_of_weights(m) -> int:  # at an evaluation, the weights of the step about to begin
        state = m.state_dict()
        match = [s for s, w in seen.items() if all(torch.equal(w[k], state[k]) for k in w)]
        return match[0] if match else len(seen)

    def evaluate(m):
        step = step_of_weights(m)
        return {"test_accuracy": 0.5, "train_accuracy": 0.9 if step >= jump_at else 0.05}

    config = TrainConfig(steps=40, batch_size=2, lr=1e-2, eval_every=5, warmup_steps=1, stop_accuracy=0.7,
                         stop_bisect=True)
    stop = AccuracyStop(0.7, nearest=False, bisect=True, evaluate=evaluate)
    record = train(model, config, stop.watching(model, next_batch), evaluate=evaluate, stop=stop)
    assert record["stopped_at"] == stopped_at and record["step"] == list(range(stopped_at))
    assert record["eval"][-1] == {"step": stopped_at, "test_accuracy": 0.5, "train_accuracy": 0.9}
    assert record.get("overshot", {}).get("step") == (15 if stopped_at < 15 else None)
    assert step_of_weights(model) == stopped_at  # its weights (at 15: the evaluation's own)
    with pytest.raises(ValueError, match="evaluation"):
        AccuracyStop(0.7, nearest=False, bisect=True)
    with pytest.raises(ValueError, match="not both"):
        AccuracyStop(0.7, nearest=True, bisect=True, evaluate=evaluate)


@pytest.mark.parametrize("bisect", [True, False])
def test_finetune_keeps_the_weights_for_the_search_only_when_bisecting(tiny_pretrain_payload, monkeypatch,
                                                                       bisect):
    """The warm-up wires the stop's `watching` into its batches exactly when stop_bisect is on; without it
    the search would have no weights to search and would silently do nothing."""
    import nanocot.sft as sft

    watched = []
    real = sft.AccuracyStop.watching
    monkeypatch.setattr(sft.AccuracyStop, "watching",
                        lambda self, model, next_batch: watched.append(1) or real(self, model, next_batch))
    cfg = TrainConfig(steps=3, batch_size=8, lr=1e-3, warmup_steps=1, eval_every=2, stop_accuracy=0.99,
                      stop_bisect=bisect)
    payload = sft.finetune(tiny_pretrain_payload, "warmup", cfg, "cpu")
    assert watched == ([1] if bisect else []) and payload["train_config"]["stop_bisect"] == bisect


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_warmup_direct_fraction_rehearses_the_direct_answer(tiny_pretrain_payload, monkeypatch, fraction):
    """`direct_fraction` of a warm-up's examples are direct-answer examples (the direct prompt, loss on the
    answer), the rest trace-writing ones; 0 draws none."""
    import nanocot.sft as sft

    modes = []
    real = sft.task_example
    monkeypatch.setattr(sft, "task_example",
                        lambda tok, p, mode, *a: modes.append(mode) or real(tok, p, mode, *a))
    cfg = TrainConfig(steps=4, batch_size=32, lr=1e-3, warmup_steps=1, eval_every=0, direct_fraction=fraction)
    sft.finetune(tiny_pretrain_payload, "warmup", cfg, "cpu")
    share = modes.count(DIRECT) / len(modes)
    assert len(modes) == 128
    assert share == fraction if fraction in (0.0, 1.0) else 0.35 < share < 0.65


def test_warmup_balanced_steps_replace_a_share_of_the_traces(tiny_pretrain_payload, monkeypatch):
    """`balanced_steps` of a warm-up's trace examples are the task's balanced single steps; 0 draws none."""
    import nanocot.sft as sft

    drawn = []
    real = ModularAddition.sample_balanced_steps
    monkeypatch.setattr(ModularAddition, "sample_balanced_steps",
                        lambda self, rng, n: drawn.append(n) or real(self, rng, n))
    for fraction in (0.0, 0.5):
        drawn.clear()
        cfg = TrainConfig(steps=4, batch_size=32, lr=1e-3, warmup_steps=1, eval_every=0,
                          balanced_steps=fraction)
        payload = sft.finetune(tiny_pretrain_payload, "warmup", cfg, "cpu")
        assert payload["train_config"]["balanced_steps"] == fraction
        assert len(drawn) == 0 if fraction == 0 else 0.35 < len(drawn) / 128 < 0.65
