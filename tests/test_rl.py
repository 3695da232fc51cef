"""REINFORCE: advantages, per-token log-probs, the direction of one real update, skipped steps, exact
resume, paraphrase in the loop, and train_rl.py as a user runs it."""

import copy
import math
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import cli_exit_code, make_model

import nanocot.rl as rl
from nanocot import checkpoint
from nanocot.config import TaskConfig, model_config
from nanocot.model import GPT
from nanocot.paraphrase import canonicalize, swap_operands, to_words
from nanocot.rl import Reinforce, RLConfig, Rollout, Segment, advantages, sequence_logprobs
from nanocot.sampling import Samples
from nanocot.task import COT, ModularAddition, Problem, prompt, reference_trace
from nanocot.tokenizer import Tokenizer

TOK = Tokenizer()


@pytest.fixture(scope="module")
def task() -> ModularAddition:
    return ModularAddition(TaskConfig())


def tiny_model(seed: int = 0, block_size: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = model_config("tiny", len(TOK))
    return GPT(replace(config, block_size=block_size) if block_size else config)


# --------------------------------------------------------------------------------------------- advantages


def test_learning_rate_schedules():
    """Warm-up ramps linearly; cosine ends at 0 on the last step; constant stays at lr; Adam gets the
    betas."""
    cfg = RLConfig(lr=1e-3, steps=100, warmup_steps=10, lr_schedule="constant")
    assert (rl.learning_rate(cfg, 0) == pytest.approx(1e-4)
            and rl.learning_rate(cfg, 50) == pytest.approx(1e-3))
    cos = RLConfig(lr=1e-3, steps=100, warmup_steps=0, lr_schedule="cosine")
    assert (rl.learning_rate(cos, 0) == pytest.approx(1e-3)
            and rl.learning_rate(cos, 50) == pytest.approx(5e-4))
    assert rl.learning_rate(cos, 100) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="lr schedule"):
        rl.learning_rate(RLConfig(lr_schedule="linear"), 0)
    trainer = Reinforce(tiny_model(), ModularAddition(TaskConfig()), RLConfig(beta1=0.99, beta2=0.999))
    assert trainer.optimizer.param_groups[0]["betas"] == (0.99, 0.999)


def test_leave_one_out_advantages():
    """r_i minus the mean of the *other* rewards: the lone success gets +1, each failure -1/3."""
    adv = advantages(torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 0, 0]]), "loo")
    assert torch.allclose(adv, torch.tensor([[1.0, -1 / 3, -1 / 3, -1 / 3], [2 / 3, 2 / 3, -2 / 3, -2 / 3]]))


def test_mean_baseline_advantages():
    adv = advantages(torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 0, 0]]), "mean")
    assert torch.allclose(adv, torch.tensor([[0.75, -0.25, -0.25, -0.25], [0.5, 0.5, -0.5, -0.5]]))


@pytest.mark.parametrize("baseline", ["loo", "mean"])
def test_all_equal_group_has_zero_advantage(baseline):
    adv = advantages(torch.tensor([[1.0, 1, 1], [0.0, 0, 0], [1.0, 0, 1]]), baseline)
    assert torch.equal(adv[:2], torch.zeros(2, 3))
    assert adv[2].abs().sum() > 0


def test_no_baseline_reinforces_right_traces_only():
    """'none': the advantage is the reward, so wrong traces get zero weight (never pushed down) and a group
    that is all right is still reinforced."""
    rewards = torch.tensor([[1.0, 0, 0], [1.0, 1, 1], [0.0, 0, 0]])
    assert torch.equal(advantages(rewards, "none"), rewards)


def test_unknown_baseline_raises():
    with pytest.raises(ValueError, match="baseline"):
        advantages(torch.ones(2, 3), "median")


# -------------------------------------------------------------------------------------------- log-probs


@torch.no_grad()
def test_sequence_logprobs_match_full_forward():
    """The loss differentiates these: log_softmax of one forward over context + generated, read at the
    generated tokens only; the mask is 1 exactly on generated tokens (never the prompt)."""
    model = make_model(len(TOK), std=0.3)
    contexts = [TOK.encode("\n8+7%21:"), TOK.encode("\n3+4+5%10:"), TOK.encode("\n1+1%12:")]
    generated = [TOK.encode("8+7=15;15\n"), TOK.encode("3;"), TOK.encode("1+1=2,2+0=2;2\n")]
    logp, entropy, mask = sequence_logprobs(model, contexts, generated, TOK.pad_id)
    T = max(len(c) + len(g) for c, g in zip(contexts, generated)) - 1
    assert logp.shape == entropy.shape == mask.shape == (3, T)
    for i, (c, g) in enumerate(zip(contexts, generated)):
        full = F.log_softmax(model(torch.tensor([c + g]))[0], dim=-1)  # (len, V)
        positions = torch.arange(len(c) - 1, len(c) + len(g) - 1)
        expected = full[positions, torch.tensor(g)]
        assert torch.allclose(logp[i, positions], expected, atol=1e-5)
        expected_entropy = -(full[positions].exp() * full[positions]).sum(-1)
        assert torch.allclose(entropy[i, positions], expected_entropy, atol=1e-5)
        want_mask = torch.zeros(T)
        want_mask[positions] = 1.0
        assert torch.equal(mask[i], want_mask), "mask must cover exactly the generated tokens"
        assert torch.all(logp[i][want_mask == 0] == 0) and torch.all(entropy[i][want_mask == 0] == 0)
    assert mask.sum().item() == sum(len(g) for g in generated)


# -------------------------------------------------------------------------------------- one real update

PROBLEM = Problem((8, 7, 12), 21)
RIGHT = reference_trace(PROBLEM) + "\n"  # 8+7=15,15+12=27-21=6;6
WRONG = "8+7=14,14+12=26-21=5;5\n"


def _fixed_sample(groups: list[list[tuple[str, float]]]):
    """A stand-in for Reinforce.rollout returning fixed completions and rewards (one group per problem),
    so Reinforce.step's own loss, skip and optimizer code runs on known data."""
    ctx = TOK.encode(prompt(PROBLEM, COT))
    traces, texts = [], []
    for group in groups:
        for text, _ in group:
            traces.append(Segment(ctx, TOK.encode(text), len(traces))), texts.append(text)
    rewards = torch.tensor([[r for _, r in group] for group in groups])
    result = Rollout(traces, [], texts, rewards, [len(s.tokens) for s in traces])
    return lambda problems: copy.deepcopy(result)


def _total_logp(model, text: str) -> float:
    with torch.no_grad():
        logp, _, _ = sequence_logprobs(model, [TOK.encode(prompt(PROBLEM, COT))], [TOK.encode(text)],
                                       TOK.pad_id)
    return logp.sum().item()


def _trainer(model, task, groups, **overrides) -> Reinforce:
    # one step at exactly `lr`: no warm-up ramp, no schedule (the defaults' first step is lr / 300)
    overrides = {"warmup_steps": 0, "lr_schedule": "constant", **overrides}
    cfg = RLConfig(prompts_per_step=len(groups), samples_per_prompt=len(groups[0]), **overrides)
    trainer = Reinforce(model, task, cfg)
    trainer.rollout = _fixed_sample(groups)
    return trainer


def test_step_loss_is_advantage_weighted_logprob(task):
    """Reinforce.step's loss = -sum(adv * logp) / tokens of informative groups; an all-equal group adds
    neither loss nor tokens (it must not dilute the informative one)."""
    model = tiny_model()
    groups = [[(RIGHT, 1.0), (WRONG, 0.0)], [(RIGHT, 1.0), (RIGHT, 1.0)]]
    trainer = _trainer(model, task, groups, lr=1e-3)
    with torch.no_grad():
        traces = trainer.rollout(None).traces[:2]
        logp, _, mask = sequence_logprobs(model, [s.context for s in traces], [s.tokens for s in traces],
                                          TOK.pad_id)
    expected = -(logp[0].sum() - logp[1].sum()) / mask.sum()  # loo advantages +1 / -1
    stats = trainer.step()
    assert stats["skipped"] == 0.0
    assert stats["loss"] == pytest.approx(expected.item(), rel=1e-4)
    assert stats["reward"] == 0.75 and stats["informative_groups"] == 0.5


def test_answers_after_paraphrased_traces_are_learned_as_in_one_batch(task):
    """The answers re-sampled after paraphrased traces are run apart from the traces (padded to their own,
    longer contexts); the loss must be what one batch of all segments gives: -sum(adv * logp) / tokens."""
    model = tiny_model()
    trainer = _trainer(model, task, [[(RIGHT, 1.0), (WRONG, 0.0)]], lr=1e-3)
    ctx = TOK.encode(prompt(PROBLEM, COT))
    paraphrased = ctx + TOK.encode("8 plus 7 is 15, 15 plus 12 is 27 minus 21 is 6;")
    body = TOK.encode(RIGHT.split(";")[0] + ";")
    contexts, generated = [ctx, ctx, paraphrased], [body, TOK.encode(WRONG), TOK.encode("6\n")]
    segments = [Segment(c, g, i) for c, g, i in zip(contexts, generated, [0, 1, 0])]
    # sample 0's trace in its own context, then its answer after the paraphrase
    rollout = Rollout(segments[:2], segments[2:], [None, WRONG], torch.tensor([[1.0, 0.0]]), [len(body), 0])
    trainer.rollout = lambda problems: rollout
    with torch.no_grad():
        logp, _, mask = sequence_logprobs(model, contexts, generated, TOK.pad_id)
    expected = -(logp[0].sum() + logp[2].sum() - logp[1].sum()) / mask.sum()  # loo advantages +1 / -1
    stats = trainer.step()
    assert stats["loss"] == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("coefs, rows", [({}, 2), ({"entropy_coef": 0.01}, 4), ({"kl_coef": 0.1}, 4)])
def test_only_informative_samples_are_learned_from(task, monkeypatch, coefs, rows):
    """An all-equal group's policy gradient is exactly zero, so its samples skip the forward and backward;
    a KL or entropy term touches every sample, so with either on all of them are run."""
    model = tiny_model()
    trainer = _trainer(model, task, [[(RIGHT, 1.0), (WRONG, 0.0)], [(RIGHT, 1.0), (RIGHT, 1.0)]], lr=1e-3,
                       **coefs)
    trainer.reference = copy.deepcopy(model).eval()
    seen = []
    real = rl.sequence_logprobs
    monkeypatch.setattr(rl, "sequence_logprobs", lambda m, c, g, *a: seen.append(len(c)) or real(m, c, g, *a))
    stats = trainer.step()
    assert seen == [rows, rows]  # the policy's forward, then the start policy's (KL log)
    assert stats["skipped"] == 0.0 and stats["kl"] >= 0.0 and stats["entropy"] > 0.0


def test_kl_log_is_estimated_on_the_first_learned_samples(task, monkeypatch):
    """With the KL penalty off, the start policy runs only on the first `kl_log_samples` learned samples, and
    the logged KL is the k3 estimate over exactly their tokens."""
    model = tiny_model()
    completions = [[(RIGHT, 1.0), (WRONG, 0.0)], [(WRONG, 0.0), (RIGHT, 1.0)]]
    trainer = _trainer(model, task, completions, lr=1e-3, kl_log_samples=1)
    start = tiny_model(seed=1).eval()  # a different policy, so the KL is not zero
    trainer.reference = start
    seen = []
    real = rl.sequence_logprobs
    monkeypatch.setattr(rl, "sequence_logprobs", lambda m, c, g, *a: seen.append(len(c)) or real(m, c, g, *a))
    ctx, right = [TOK.encode(prompt(PROBLEM, COT))], [TOK.encode(RIGHT)]
    with torch.no_grad():
        logp, _, mask = real(model, ctx, right, TOK.pad_id)
        ref_logp, _, _ = real(start, ctx, right, TOK.pad_id)
    log_ratio = (ref_logp - logp) * mask
    expected = ((log_ratio.exp() - 1 - log_ratio) * mask).sum() / mask.sum()
    stats = trainer.step()
    assert seen == [4, 1]  # every learned sample's forward, then the start policy on the first one only
    assert stats["kl"] == pytest.approx(expected.item(), rel=1e-4) and stats["kl"] > 0


@pytest.mark.parametrize("coefs, logged", [({"kl_log_every": 2}, [True, False, True]),
                                           ({"kl_log_every": 2, "kl_coef": 0.1}, [True, True, True])])
def test_kl_log_runs_the_start_policy_every_kl_log_every_steps(task, monkeypatch, coefs, logged):
    """With the KL penalty off, the start policy runs on every `kl_log_every`-th step only and the others log
    NaN; with the penalty on, the KL is in every step's loss."""
    model = tiny_model()
    trainer = _trainer(model, task, [[(RIGHT, 1.0), (WRONG, 0.0)], [(WRONG, 0.0), (RIGHT, 1.0)]], lr=1e-3,
                       **coefs)
    start = tiny_model(seed=1).eval()
    trainer.reference = start
    calls = []
    real = rl.sequence_logprobs
    monkeypatch.setattr(rl, "sequence_logprobs", lambda m, *a: calls.append(m is start) or real(m, *a))
    kls = []
    for _ in logged:
        calls.clear()
        kls.append(trainer.step()["kl"])
        assert any(calls) == (not math.isnan(kls[-1]))
    assert [not math.isnan(kl) for kl in kls] == logged


@pytest.mark.parametrize("optimizer, lr", [("adamw", 3e-3), ("sgd", 0.1)])
@pytest.mark.parametrize("seed", [0, 1])
def test_one_step_raises_rewarded_and_lowers_penalised(task, seed, optimizer, lr):
    """The sign of the whole method: after one update the rewarded completion is likelier and the
    penalised one less likely. (The lr is 30x the default but still a small step: far larger steps raise
    both, through the tokens the two traces share.)"""
    model = tiny_model(seed)
    before = _total_logp(model, RIGHT), _total_logp(model, WRONG)
    trainer = _trainer(model, task, [[(RIGHT, 1.0), (WRONG, 0.0)]], lr=lr)
    if optimizer == "sgd":
        trainer.optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    assert trainer.step()["skipped"] == 0.0
    after = _total_logp(model, RIGHT), _total_logp(model, WRONG)
    assert after[0] > before[0] + 0.3, (before, after)
    assert after[1] < before[1] - 0.3, (before, after)


def test_swapped_rewards_reverse_the_update(task):
    model = tiny_model()
    before = _total_logp(model, RIGHT), _total_logp(model, WRONG)
    _trainer(model, task, [[(RIGHT, 0.0), (WRONG, 1.0)]], lr=3e-3).step()
    after = _total_logp(model, RIGHT), _total_logp(model, WRONG)
    assert after[0] < before[0] - 0.3 and after[1] > before[1] + 0.3, (before, after)


def test_no_baseline_step_raises_right_and_leaves_wrong_alone_without_signal(task):
    """baseline 'none': a group of only wrong traces is skipped; a right trace is made likelier."""
    model = tiny_model()
    trainer = _trainer(model, task, [[(WRONG, 0.0), (WRONG, 0.0)]], lr=3e-3, baseline="none")
    assert trainer.step()["skipped"] == 1.0
    before = _total_logp(model, RIGHT)
    trainer.rollout = _fixed_sample([[(RIGHT, 1.0), (WRONG, 0.0)]])
    assert trainer.step()["skipped"] == 0.0
    assert _total_logp(model, RIGHT) > before + 0.3


def test_all_equal_rewards_skip_the_step(task):
    """No informative group: nothing may move, not even through Adam's momentum from an earlier step
    (a zero gradient plus stale momentum is a full-size step)."""
    model = tiny_model()
    trainer = _trainer(model, task, [[(RIGHT, 1.0), (WRONG, 0.0)]], lr=3e-3)
    assert trainer.step()["skipped"] == 0.0  # build up Adam state
    params = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(trainer.optimizer.state_dict())
    for rewards in ([1.0, 1.0], [0.0, 0.0]):
        trainer.rollout = _fixed_sample([[(RIGHT, rewards[0]), (WRONG, rewards[1])]])
        stats = trainer.step()
        assert stats["skipped"] == 1.0 and stats["loss"] == 0.0
        for name, value in model.state_dict().items():
            assert torch.equal(value, params[name]), name
        now = trainer.optimizer.state_dict()
        for key, state in opt_state["state"].items():
            for name, value in state.items():
                assert torch.equal(now["state"][key][name], value), (key, name)
    assert trainer.step_index == 3


def test_replay_draws_the_unsolved_problems_again(task):
    """With replay, a problem whose group had a wrong sample comes back in a later step's draw, oldest first,
    in place of fresh ones; a solved one does not. Without it the draw is the fresh stream alone."""
    groups = [[(RIGHT, 1.0), (WRONG, 0.0)], [(RIGHT, 1.0), (RIGHT, 1.0)], [(WRONG, 0.0), (WRONG, 0.0)],
              [(RIGHT, 1.0), (RIGHT, 1.0)]]
    drawn = {}
    for fraction in (0.0, 0.5):
        trainer = _trainer(tiny_model(), task, groups, replay_fraction=fraction, seed=3)
        seen, fake = [], _fixed_sample(groups)
        trainer.rollout = lambda problems, fake=fake, seen=seen: seen.append(problems) or fake(problems)
        for _ in range(2):
            trainer.step()
        drawn[fraction] = seen
    fresh = task.sample_train(np.random.default_rng(3), 8, k=task.config.num_operands)
    assert drawn[0.0] == [fresh[:4], fresh[4:]]  # replay off: the draw is unchanged
    first, second = drawn[0.5]
    assert first == drawn[0.0][0]
    assert second == fresh[4:6] + [first[0], first[2]]  # the two unsolved ones, in place of two fresh


def test_replay_keeps_the_newest_unsolved_problems(task):
    trainer = Reinforce(tiny_model(), task, RLConfig(prompts_per_step=4, replay_fraction=1.0, replay_size=3))
    problems = [task.problem([i, 1, 2, 3], 10 + i) for i in range(5)]
    trainer._remember_failures(problems[:2], [True, True])
    trainer._remember_failures(problems[2:], [True, False, True])
    assert trainer.replay == [problems[1], problems[2], problems[4]]
    assert trainer._draw_problems()[1:] == [problems[1], problems[2], problems[4]] and trainer.replay == []


# ------------------------------------------------------------------------------------------------ resume


def _parity_reward(problem, text, mode=COT):
    """A random tiny model never answers right; a reward that depends on the sampled text makes groups
    informative, so the resumed steps really update the weights."""
    return float(len(text) % 2)


def test_state_dict_round_trip_continues_exactly(task, monkeypatch):
    """Resuming (weights + trainer state) must reproduce the uninterrupted run exactly: same samples,
    rewards, updates and all three random streams (numpy: problems; torch: tokens; python: paraphrases)."""
    monkeypatch.setattr(rl, "reward", _parity_reward)
    # every sample "has" a parseable body, so paraphrase_prob=0.5 draws from the python stream each time
    monkeypatch.setattr(rl, "split_answer", lambda text: ("8+7=15,15+12=27-21=6;", text[-1:] + "\n"))
    cfg = RLConfig(prompts_per_step=2, samples_per_prompt=2, max_new_tokens=12, lr=1e-2, seed=5,
                   paraphrase_prob=0.5, temperature=1.0, curriculum="mixed",  # varied samples: real updates
                   replay_fraction=0.5)
    model_a = make_model(len(TOK), std=0.1).train()
    model_b = copy.deepcopy(model_a)
    a = Reinforce(model_a, task, cfg)
    for _ in range(2):
        a.step()
    saved_state = copy.deepcopy(a.state_dict())
    saved_weights = copy.deepcopy(model_a.state_dict())
    stats_a = [a.step() for _ in range(2)]
    assert sum(s["skipped"] for s in stats_a) < 2, "the test needs real updates after the resume point"
    assert not all(torch.equal(v, saved_weights[k]) for k, v in model_a.state_dict().items())

    b = Reinforce(model_b, task, cfg)  # fresh streams, then overwritten by the saved ones
    model_b.load_state_dict(saved_weights)
    b.load_state_dict(saved_state)
    assert b.step_index == 2
    stats_b = [b.step() for _ in range(2)]
    for sa, sb in zip(stats_a, stats_b):
        for key in ("reward", "trace_length", "skipped", "loss", "entropy", "informative_groups"):
            # nan: a skipped step
            assert sa[key] == sb[key] or (math.isnan(sa[key]) and math.isnan(sb[key])), key
    for name, value in model_a.state_dict().items():
        assert torch.equal(value, model_b.state_dict()[name]), name
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["step"] == sb["step"] == 4
    assert sa["numpy_rng"] == sb["numpy_rng"]
    assert sa["python_rng"] == sb["python_rng"] and sa["python_rng_pos"] == sb["python_rng_pos"]
    assert torch.equal(sa["torch_generator"], sb["torch_generator"])
    assert sa["replay"] == sb["replay"] and saved_state["replay"], "the replay queue must be saved"


# ----------------------------------------------------------------------------------- paraphrase in the loop


def _samples(texts: list[str], width: int) -> Samples:
    tokens = torch.zeros((len(texts), width), dtype=torch.long)
    mask = torch.zeros((len(texts), width))
    for i, t in enumerate(texts):
        ids = TOK.encode(t)
        tokens[i, : len(ids)] = torch.tensor(ids)
        mask[i, : len(ids)] = 1.0
    return Samples(tokens, torch.zeros_like(mask), mask)


def test_paraphrase_in_the_loop(task, monkeypatch):
    """With paraphrase_prob=1 a parseable sampled trace is rewritten, the answer is re-sampled after the
    rewritten trace, and the reward is on *that* answer, not on the one sampled first."""
    p = Problem((8, 7, 12), 21)  # answer 6
    body = reference_trace(p).split(";")[0] + ";"
    first = [body + "5\n", body + "6\n", "junk\n", body + "6\n"]  # sample 2 does not parse
    resampled = ["6\n", "9\n", "6\n"]  # answers after the paraphrased bodies of samples 0, 1, 3
    calls = []

    def fake_generate(model, prompts, max_new_tokens, *args, **kwargs):
        calls.append(prompts)
        return _samples(first if len(calls) == 1 else resampled, max_new_tokens)

    monkeypatch.setattr(rl, "generate", fake_generate)
    monkeypatch.setattr(rl, "generate_ragged", fake_generate)  # the answers after paraphrased traces
    model = tiny_model()
    cfg = RLConfig(prompts_per_step=1, samples_per_prompt=4, paraphrase_prob=1.0, paraphraser="swap", seed=3,
                   paraphrase_from_end=0.0)
    trainer = Reinforce(model, task, cfg)
    rollout = trainer.rollout([p])
    rewards, texts = rollout.rewards, rollout.texts

    # the paraphrases the rollout drew: same generator seed and the same order of draws (one random() per
    # parseable sample for the coin, then the swap's own draws; no direction coin with paraphrase_from_end 0)
    rng = random.Random(3)
    expected_bodies = {}
    for i in (0, 1, 3):
        assert rng.random() < 1.0
        expected_bodies[i] = swap_operands(body, rng)

    prompt_ids = TOK.encode(prompt(p, COT))
    assert len(calls) == 2
    assert calls[1] == [prompt_ids + TOK.encode(expected_bodies[i]) for i in (0, 1, 3)], \
        "answers are re-sampled after the paraphrased traces"
    assert texts == [expected_bodies[0] + "6\n", expected_bodies[1] + "9\n", "junk\n",
                     expected_bodies[3] + "6\n"]
    for i in (0, 1, 3):
        assert texts[i].split(";")[0] != body.rstrip(";")
    assert rewards.tolist() == [[1.0, 0.0, 0.0, 1.0]], "reward on the re-sampled answer, not the first one"
    assert rollout.lengths == [len(TOK.encode(t)) for t in first]
    # segments: the trace in its own context, the answer in the paraphrased context
    assert ([s.sample for s in rollout.traces] == [0, 1, 2, 3]
            and [s.sample for s in rollout.answers] == [0, 1, 3])
    assert [s.tokens for s in rollout.traces] == [TOK.encode(body), TOK.encode(body), TOK.encode("junk\n"),
                                                  TOK.encode(body)]
    assert [s.context for s in rollout.traces] == [prompt_ids] * 4
    assert [s.context for s in rollout.answers] == calls[1]
    assert [s.tokens for s in rollout.answers] == [TOK.encode(a) for a in resampled]


LONG_PROBLEM = Problem((13, 18, 14, 4), 21)  # its whole trace in words does not fit a 42-token context
LONG_BODY = reference_trace(LONG_PROBLEM).split(";")[0] + ";"
SHORT_BLOCK = 42


def _paraphrased_contexts(task, monkeypatch, **config) -> tuple[list[str], int]:
    """Every sample of one step on LONG_PROBLEM writes its reference trace; returns the paraphrased traces the
    answers were re-sampled after (as text, prompt removed) and the prompt's length in tokens."""
    calls = []

    def fake_generate(model, prompts, max_new_tokens, *args, **kwargs):
        calls.append(prompts)
        return _samples([LONG_BODY + "7\n"] * len(prompts) if len(calls) == 1 else ["7\n"] * len(prompts),
                        max_new_tokens)

    monkeypatch.setattr(rl, "generate", fake_generate)
    monkeypatch.setattr(rl, "generate_ragged", fake_generate)
    trainer = Reinforce(tiny_model(block_size=SHORT_BLOCK), task,
                        RLConfig(prompts_per_step=1, paraphrase_prob=1.0, seed=0, **config))
    n_prompt = len(TOK.encode(prompt(LONG_PROBLEM, COT)))
    trainer.rollout([LONG_PROBLEM])
    return [TOK.decode(c[n_prompt:]) for c in calls[1]], n_prompt


def test_paraphrase_in_the_loop_rewrites_the_longest_prefix_that_fits(task, monkeypatch):
    """A rewrite that would overflow the context (here a short one) rewrites, as the warm-up and the
    evaluation do, its longest fitting prefix of steps and leaves the rest as written; one paraphraser of the
    list is drawn per sample."""
    body, block = LONG_BODY, SHORT_BLOCK
    contexts, n_prompt = _paraphrased_contexts(task, monkeypatch, samples_per_prompt=6,
                                               paraphraser="words,swap", paraphrase_from_end=0.0)
    whole = n_prompt + len(TOK.encode(to_words(body, random.Random(0)))) + 2
    assert whole > block, "the whole translated trace must not fit"
    assert len(contexts) == 6
    assert all(n_prompt + len(TOK.encode(c)) <= block - 2 for c in contexts)
    spelled = [c for c in contexts if "eighteen" in c]
    swapped = [c for c in contexts if c not in spelled and c != body and canonicalize(c) != body]
    assert spelled and swapped and len(spelled) + len(swapped) == 6, contexts
    assert all(c.endswith(body.split(",")[-1]) for c in spelled), "the steps that do not fit stay as written"


def test_paraphrase_from_end_spells_the_last_step_first(task, monkeypatch):
    """With `paraphrase_from_end` 1 the longest fitting *suffix* is translated: the last step, whose value
    the answer repeats, is in words and the first steps stay as written (from the front it is the other way
    round)."""
    body = LONG_BODY
    contexts, _ = _paraphrased_contexts(task, monkeypatch, samples_per_prompt=4, paraphraser="words",
                                        paraphrase_from_end=1.0)
    first_step = body.split(",")[0]
    assert len(contexts) == 4 and all(c.startswith(first_step + ",") and c.endswith(" is seven;")
                                      for c in contexts), contexts
    assert all(canonicalize(c) == body for c in contexts)


def test_a_trace_the_paraphraser_cannot_read_earns_nothing(task, monkeypatch):
    """The dodge a policy found: a right answer after a trace with a stray number (`...=18 9;18`) that no
    paraphraser parses. Drawn for paraphrase, it must earn 0, or RL teaches the policy to evade the defence;
    not drawn (paraphrase_prob=0), the same completion keeps its outcome reward."""
    p = Problem((8, 7, 12), 21)  # answer 6
    body = reference_trace(p).split(";")[0]
    dodge = [body + " 9;6\n", body + ";6\n"]  # right answer after an unreadable and a readable trace
    calls = []

    def fake_generate(model, prompts, max_new_tokens, *args, **kwargs):
        calls.append(prompts)
        return _samples(dodge if len(calls) == 1 else ["6\n"], max_new_tokens)

    monkeypatch.setattr(rl, "generate", fake_generate)
    monkeypatch.setattr(rl, "generate_ragged", fake_generate)  # the answers after paraphrased traces
    for prob, expected in ((1.0, [[0.0, 1.0]]), (0.0, [[1.0, 1.0]])):
        calls.clear()
        trainer = Reinforce(tiny_model(), task, RLConfig(prompts_per_step=1, samples_per_prompt=2,
                                                         paraphrase_prob=prob, paraphraser="reword"))
        rewards = trainer.rollout([p]).rewards
        assert rewards.tolist() == expected, prob


def test_paraphrase_of_a_trace_that_fills_the_context(monkeypatch):
    """k = 7: the prompt has 17 tokens, so generation may use 96 - 17 = 79; a parseable 79-token body
    ending at ';' (no room left for an answer) must not crash the step (it can earn no reward)."""
    from dataclasses import replace

    task7 = ModularAddition(replace(TaskConfig(), num_operands=7))
    p = Problem((1, 2, 3, 4, 5, 6, 7), 21)
    body = "-1+2=1" + "+1=2-1=1" * 9 + ";"  # parses; any body the model samples may be this long
    model = tiny_model()
    assert len(TOK.encode(prompt(p, COT))) + len(TOK.encode(body)) == model.config.block_size
    real_generate, calls = rl.generate, []

    def first_call_fixed(model, prompts, max_new_tokens, *args, **kwargs):
        calls.append(prompts)
        if len(calls) == 1:  # what generate returns for a row that used its whole budget of 79 tokens
            return _samples([body] * len(prompts), len(TOK.encode(body)))
        return real_generate(model, prompts, max_new_tokens, *args, **kwargs)

    monkeypatch.setattr(rl, "generate", first_call_fixed)
    trainer = Reinforce(model, task7, RLConfig(prompts_per_step=1, samples_per_prompt=2, paraphrase_prob=1.0))
    assert trainer.rollout([p]).rewards.tolist() == [[0.0, 0.0]]


# --------------------------------------------------------------------------------------------------- CLI

TIMEOUT = 120


def _run(root: Path, script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # tiny models; avoid oversubscribing a small shared machine
    env["MKL_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, str(root / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


def _e2e(root: Path, work: Path):
    pre = _run(root, "train_sft.py", ["--size", "tiny", "--stage", "pretrain", "--steps", "5",
                                      "--corpus-lines", "500", "--ckpt-dir", "ck", "--device", "cpu"], work)
    if pre.returncode != 0:
        return work / "ck", pre, None
    rl_args = ["--size", "tiny", "--steps", "2", "--eval-every", "1", "--prompts", "2", "--samples", "2",
               "--eval-problems", "20", "--pass-problems", "5", "--pass-k", "2", "--max-new-tokens", "30",
               "--ckpt-dir", "ck", "--device", "cpu"]
    return work / "ck", pre, _run(root, "train_rl.py", rl_args, work)


@pytest.fixture(scope="module", autouse=True)
def end_to_end(request, tmp_path_factory, root):
    """The pretrain -> RL subprocess chain (~20 s, mostly imports and train_rl's three 1,100-completion
    evaluations), started in the background when this module starts so the other tests overlap it
    (only when the end-to-end test is selected)."""
    if not any(item.name == "test_cli_tiny_end_to_end" for item in request.session.items):
        yield None
        return
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(_e2e, root, tmp_path_factory.mktemp("rl_e2e"))
    yield future
    future.result(timeout=2 * TIMEOUT + 30)  # never leave a subprocess behind
    pool.shutdown()


def _main_exit_code(argv: list[str]) -> int:
    import train_rl

    return cli_exit_code(train_rl.main, argv)


@pytest.mark.parametrize("args, expected", [
    (["--samples", "1"], "--samples"),
    ([], "tiny-pretrain.pt"),  # an empty checkpoint folder: no starting checkpoint
    (["--init", "warmup"], "tiny-warmup.pt"),
], ids=["samples_1", "missing_start", "missing_warmup"])
def test_cli_usage_errors(tmp_path, capsys, args, expected):
    """A user mistake: one line on stderr, exit code 2, no traceback, nothing written (in-process through
    run_cli, exactly what `python train_rl.py` runs, without ~3 s of imports per case)."""
    code = _main_exit_code(["--size", "tiny", "--steps", "1", "--device", "cpu", "--ckpt-dir", str(tmp_path),
                            *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert expected in lines[0], lines[0]
    assert not list(tmp_path.iterdir())


def test_resume_reads_a_config_saved_by_an_older_version():
    """A resumable checkpoint saved before a field was added to RLConfig resumes with that field's default; a
    field since removed is ignored; the saved values and the new step count are kept."""
    import train_rl

    saved = asdict(RLConfig(lr=1e-3, kl_log_samples=7))
    del saved["kl_log_samples"]
    saved["a_removed_knob"] = 1
    config = train_rl.resumed_config(saved, steps=10)
    assert config.lr == 1e-3 and config.steps == 10 and config.kl_log_samples == RLConfig().kl_log_samples


def test_cli_tiny_end_to_end(end_to_end):
    """pretrain -> RL from the command line: exits 0, writes the checkpoint and the plot, and the
    checkpoint is a finished run with the evaluations it was asked for."""
    folder, pre, proc = end_to_end.result(timeout=2 * TIMEOUT + 30)
    assert pre.returncode == 0, pre.stderr[-3000:]
    assert proc is not None and proc.returncode == 0, proc.stderr[-3000:]
    assert (folder / "tiny-cot.pt").is_file()
    assert (folder / "tiny-cot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ck = checkpoint.load(folder / "tiny-cot.pt", expect={"size": "tiny", "stage": "cot"})
    assert "rl_state" not in ck and "start" not in ck, (
        "a finished run is not resumable and drops the start weights")
    assert ck["step"] == 2 and len(ck["record"]["steps"]) == 2
    assert [e["step"] for e in ck["record"]["eval"]] == [0, 1, 2]
    assert [h["stage"] for h in ck["history"]] == ["pretrain", "cot"]
    assert ck["rl_config"]["prompts_per_step"] == 2 and ck["rl_config"]["samples_per_prompt"] == 2
    assert "tiny-cot.pt" in proc.stdout


# -------------------------------------------------------------------------- train_rl.py: interrupt and resume

RL_TINY = ["--size", "tiny", "--init", "pretrain", "--steps", "4", "--save-every", "1", "--prompts", "2",
           "--samples", "2", "--max-new-tokens", "8", "--eval-every", "2", "--eval-problems", "4",
           "--pass-problems", "2", "--pass-k", "2", "--device", "cpu", "--threads", "1"]


def _interrupt_rl_step(monkeypatch, call: int) -> None:
    """A real SIGINT while the `call`-th REINFORCE step (0-based) runs: the loop finishes it, saves, stops."""
    import signal

    calls, real = {"n": 0}, Reinforce.step

    def step_then_signal(self):
        if calls["n"] == call:
            signal.raise_signal(signal.SIGINT)
        calls["n"] += 1
        return real(self)

    monkeypatch.setattr(Reinforce, "step", step_then_signal)


def test_cli_interrupt_then_plain_resume_finishes_the_same_run(tiny_pretrain_payload, tmp_path, monkeypatch,
                                                               capsys):
    """Ctrl-C through train_rl.py: exit 130 naming the saved step; `--resume` with no other flag (as the
    message says) runs to the saved run's own 4 steps, not the default 2,000, and ends on the uninterrupted
    run's weights."""
    import train_rl

    for name in "ab":
        checkpoint.save(tmp_path / name / "tiny-pretrain.pt", tiny_pretrain_payload)
    assert cli_exit_code(train_rl.main, [*RL_TINY, "--ckpt-dir", str(tmp_path / "a")]) == 0
    with monkeypatch.context() as m:
        _interrupt_rl_step(m, 2)
        assert cli_exit_code(train_rl.main, [*RL_TINY, "--ckpt-dir", str(tmp_path / "b")]) == 130
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "at step 3" in message and "--resume" in message, message
    assert cli_exit_code(train_rl.main, ["--size", "tiny", "--device", "cpu", "--threads", "1", "--resume",
                                         "--ckpt-dir", str(tmp_path / "b")]) == 0
    whole, resumed = (checkpoint.load(tmp_path / name / "tiny-cot.pt", finished=True) for name in "ab")
    assert resumed["rl_config"]["steps"] == 4 and len(resumed["record"]["steps"]) == 4
    assert all(torch.equal(whole["state_dict"][k], v) for k, v in resumed["state_dict"].items())


def test_cli_interrupt_before_any_save_says_nothing_was_written(tiny_pretrain_payload, tmp_path, monkeypatch,
                                                                capsys):
    import train_rl

    checkpoint.save(tmp_path / "tiny-pretrain.pt", tiny_pretrain_payload)
    monkeypatch.setattr(rl, "train_rl", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    monkeypatch.setattr(train_rl, "train_rl", rl.train_rl)
    assert cli_exit_code(train_rl.main, [*RL_TINY, "--ckpt-dir", str(tmp_path)]) == 130
    assert "nothing was written" in capsys.readouterr().err
    assert not (tmp_path / "tiny-cot.pt").exists()


@pytest.mark.parametrize("extra", [[], ["--resume"]])
def test_cli_missing_input_creates_no_folder(tmp_path, capsys, extra):
    import train_rl

    folder = tmp_path / "typo"
    assert cli_exit_code(train_rl.main, [*RL_TINY, *extra, "--ckpt-dir", str(folder)]) == 2
    assert "not found" in capsys.readouterr().err and not folder.exists()
