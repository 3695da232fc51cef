"""The fast paths (nanocot/fast/) compute what the plain core computes: the training loss and its gradient,
REINFORCE's log-probs, loss and update, the sampler's distribution, and greedy decoding. Each test runs the
same thing with `fast.ENABLED` on and off (what `--plain` switches). The CUDA graphs' own checks are in
tests/test_cuda.py (they need a GPU)."""

import copy

import numpy as np
import pytest
import torch
from conftest import make_model

from nanocot import fast
from nanocot.config import TaskConfig, TrainConfig
from nanocot.data import collate, task_example
from nanocot.metrics import cot_completions
from nanocot.rl import Reinforce, RLConfig, Rollout, Segment, sequence_logprobs
from nanocot.sampling import generate
from nanocot.task import COT, DIRECT, ModularAddition, Problem, prompt, reference_trace
from nanocot.tokenizer import Tokenizer
from nanocot.train import train

TOK = Tokenizer()
TASK = ModularAddition(TaskConfig())


def both(run):
    """run() with the fast paths on, then off."""
    fast.ENABLED = True
    on = run()
    fast.ENABLED = False
    try:
        return on, run()
    finally:
        fast.ENABLED = True


def test_training_loop_gives_the_same_losses_and_weights():
    """Eight steps of the one training loop on mixed batches (partial masks, as SFT; a full mask, as
    pretraining): the CPU's selective-unembedding loss and max-based accuracy give the plain loop's losses,
    token accuracies and final weights, to float32 rounding."""
    rng = np.random.default_rng(0)
    problems = TASK.sample_train(rng, 32)
    batches = [collate([task_example(TOK, p, DIRECT if i % 2 else COT) for p in problems[i * 4: i * 4 + 4]],
                       TOK.pad_id, "cpu") for i in range(8)]
    x = torch.randint(1, len(TOK), (4, 24), generator=torch.Generator().manual_seed(0))
    batches[3] = (x[:, :-1], x[:, 1:], torch.ones(4, 23))  # every token counted
    config = TrainConfig(steps=8, lr=3e-3, warmup_steps=2, eval_every=0)

    def run():
        model = make_model(len(TOK), std=0.1)
        record = train(model, config, lambda step: batches[step])
        return record, model

    (rec_fast, model_fast), (rec_plain, model_plain) = both(run)
    assert rec_fast["loss"] == pytest.approx(rec_plain["loss"], rel=1e-5)
    assert rec_fast["token_accuracy"] == pytest.approx(rec_plain["token_accuracy"], abs=1e-6)
    for a, b in zip(model_fast.parameters(), model_plain.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def test_rl_logprobs_entropies_and_gradients_agree():
    """sequence_logprobs unembeds only the generated positions on a CPU: the same log-probs, entropies, mask
    and gradient (of an entropy bonus too) as the plain path's full unembedding."""
    contexts = [TOK.encode(prompt(Problem((8, 7, 12), 21), COT)),
                TOK.encode(prompt(Problem((3, 4), 12), COT))]
    generated = [TOK.encode(reference_trace(Problem((8, 7, 12), 21)) + "\n"), TOK.encode("3+4=7;7\n")]

    def run():
        model = make_model(len(TOK), std=0.1)
        logp, entropy, mask = sequence_logprobs(model, contexts, generated, TOK.pad_id, entropy_grad=True)
        (logp.sum() + 0.1 * entropy.sum()).backward()
        return logp.detach(), entropy.detach(), mask, [p.grad.clone() for p in model.parameters()]

    (lf, ef, mf, gf), (lp, ep, mp, gp) = both(run)
    assert torch.equal(mf, mp)
    assert torch.allclose(lf, lp, atol=1e-6) and torch.allclose(ef, ep, atol=1e-6)
    for a, b in zip(gf, gp):
        assert torch.allclose(a, b, atol=1e-6)


def test_reinforce_step_gives_the_same_loss_and_update():
    """One REINFORCE step on a fixed rollout (a trace, an answer re-sampled after a paraphrase, a wrong
    completion): the same loss and gradient with the fast paths on and off. (Not the updated weights: Adam's
    first step is lr x sign(gradient), which rounding flips wherever a gradient is ~0.)"""
    p = Problem((8, 7, 12), 21)
    ctx = TOK.encode(prompt(p, COT))
    body = TOK.encode(reference_trace(p).split(";")[0] + ";")
    paraphrased = ctx + TOK.encode("8 plus 7 is 15, 15 plus 12 is 27 minus 21 is 6;")
    traces = [Segment(ctx, body, 0), Segment(ctx, TOK.encode("8+7=14,14+12=26-21=5;5\n"), 1)]
    rollout = Rollout(traces, [Segment(paraphrased, TOK.encode("6\n"), 0)], [None, "x"],
                      torch.tensor([[1.0, 0.0]]), [len(body), 10])

    def run():
        model = make_model(len(TOK), std=0.1)
        cfg = RLConfig(prompts_per_step=1, samples_per_prompt=2, warmup_steps=0, lr_schedule="constant",
                       lr=1e-3)
        trainer = Reinforce(model, TASK, cfg)
        trainer.rollout = lambda problems: copy.deepcopy(rollout)
        return trainer.step()["loss"], [w.grad.clone() for w in model.parameters()]

    (loss_fast, g_fast), (loss_plain, g_plain) = both(run)
    assert loss_fast == pytest.approx(loss_plain, rel=1e-5)
    for a, b in zip(g_fast, g_plain):
        assert torch.allclose(a, b, atol=1e-6)


def test_greedy_decoding_is_the_same():
    """Greedy completions draw nothing at random: with the fast paths on or off they are identical."""
    model = make_model(len(TOK), std=0.3, n_layer=2)
    problems = TASK.test_set()[:40]
    on, off = both(lambda: cot_completions(model, TOK, problems, max_new_tokens=20))
    assert on == off


def test_the_samplers_draw_from_the_same_distribution():
    """The inverse-CDF sampler and torch.multinomial draw each first token at the model's probability (at
    temperature 0.7 with top-k 4): frequencies over 4,000 draws agree with the softmax within 0.03."""
    model = make_model(8, std=0.1)
    prompts = [[2, 3, 4]] * 4000
    with torch.no_grad():
        logits = model(torch.tensor([[2, 3, 4]]))[0, -1] / 0.7
    kth = logits.topk(4).values[-1]
    want = logits.masked_fill(logits < kth, float("-inf")).softmax(-1)

    def first_tokens():
        s = generate(model, prompts, 1, stop_id=1, temperature=0.7, top_k=4,
                     generator=torch.Generator().manual_seed(0))
        return torch.bincount(s.tokens[:, 0], minlength=8).float() / len(prompts)

    on, off = both(first_tokens)
    assert (want > 0.05).sum() >= 2, "the test needs a spread distribution"
    assert torch.allclose(on, want, atol=0.03) and torch.allclose(off, want, atol=0.03)
    assert on[want == 0].sum() == 0 and off[want == 0].sum() == 0, "top-k's cut tokens are never drawn"


def test_plain_flag_reaches_the_scripts():
    """`--plain` on a script turns the fast paths off (cli.setup_device)."""
    from nanocot.cli import Parser, add_run_flags, setup_device

    p = Parser()
    add_run_flags(p, "random seed")
    try:
        setup_device(p.parse_args(["--device", "cpu", "--plain"]))
        assert fast.ENABLED is False
    finally:
        setup_device(p.parse_args(["--device", "cpu"]))
    assert fast.ENABLED is True
