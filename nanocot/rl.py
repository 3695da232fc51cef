"""REINFORCE on outcome reward: "reward the entire chain of thought when the answer is right".

One step reads top to bottom in `Reinforce.step`: rollout -> reward -> advantage -> `policy_gradient_loss`.
- Rollout: P training problems, G completions each, sampled at temperature T. The reward is 1/0 from the
  final answer alone (task.reward: no format or step reward).
- Advantage = reward - baseline; the baseline is leave-one-out (the mean of the other G-1 rewards of the same
  prompt) or the group mean. A group whose G rewards are equal carries no signal: its advantages are exactly
  zero, so it is neither run forward nor counted in the token normaliser.
- Loss = -sum(advantage x log-prob of each sampled token) / (sampled tokens); the prompt is never in it.
  A step with no informative group is skipped: Adam would turn a zero gradient plus stale momentum into a
  full-size step.
- Temperature shapes only which traces are drawn; the loss uses the model's own (T = 1) log-probs, so at
  T < 1 it reinforces the right traces among the model's likelier ones (learns faster: docs/LOG.md).
- Paraphrase in the loop (`paraphrase_prob`), the argument's defence against hidden encodings: a sampled
  trace is rewritten and the answer re-sampled after the rewritten trace; the reward is on that answer. The
  trace is reinforced in its own context, the answer in the paraphrased one. A trace drawn for paraphrase
  that the paraphraser cannot read earns 0: otherwise the policy learns to dodge it (docs/LOG.md, 2026-11-26).
- Optional: a KL penalty to the starting policy and an entropy bonus (both off by default).
"""

import copy
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nanocot import fast
from nanocot.config import RLConfig, TrainConfig
from nanocot.data import collate
from nanocot.fast import cpu as fast_cpu
from nanocot.fast.ragged import generate_ragged
from nanocot.loop import Steps, check_finite
from nanocot.metrics import evaluate_cot
from nanocot.model import GPT
from nanocot.paraphrase import paraphrase_sampled
from nanocot.sampling import generate
from nanocot.task import COT, ModularAddition, Problem, prompt, reward
from nanocot.tokenizer import Tokenizer
from nanocot.trace import split_answer
from nanocot.train import fused_adam, lr_at


@dataclass
class Segment:
    """Tokens the policy sampled (`tokens`) after a `context`, reinforced with sample `sample`'s advantage."""

    context: list[int]
    tokens: list[int]
    sample: int  # problem-major: problem p's samples are p*G .. p*G + G-1


@dataclass
class Rollout:
    traces: list[Segment]  # one per sample: its completion, or only its trace when the answer was re-sampled
    answers: list[Segment]  # the answers re-sampled after paraphrased traces, in contexts about twice as long
    texts: list[str]  # each sample's completion as graded (after a paraphrase: the paraphrased one)
    rewards: torch.Tensor  # (P, G)
    lengths: list[int]  # tokens sampled per sample


def advantages(rewards: torch.Tensor, baseline: str) -> torch.Tensor:
    """rewards (P, G) -> advantages (P, G). Leave-one-out: r_i - mean_{j != i} r_j. "none": a right trace is
    reinforced and a wrong one ignored, i.e. supervised learning on the model's own right traces."""
    G = rewards.shape[1]
    if baseline == "none":
        return rewards.clone()
    if baseline == "mean":
        return rewards - rewards.mean(1, keepdim=True)
    if baseline == "loo":
        return rewards - (rewards.sum(1, keepdim=True) - rewards) / (G - 1)
    raise ValueError(f"unknown baseline {baseline!r}: use 'loo', 'mean' or 'none'")


def policy_gradient_loss(logps: list[torch.Tensor], masks: list[torch.Tensor],
                         advs: list[torch.Tensor]) -> torch.Tensor:
    """REINFORCE: -sum(A x log pi(token | context)) / (number of sampled tokens). Its gradient is the policy
    gradient, normalised per token. The segments come in batches: logp and mask (S, T), advantages (S,)."""
    weighted = sum((adv[:, None] * logp).sum() for logp, adv in zip(logps, advs))
    return -weighted / sum(mask.sum() for mask in masks)


def sequence_logprobs(model: GPT, contexts: list[list[int]], generated: list[list[int]], pad_id: int,
                      entropy_grad: bool = False):
    """Per-token log-probs and entropies of `generated[i]` after `contexts[i]`, (N, T) each and zero off the
    generated tokens, with their 0/1 mask. The entropy has a gradient only for an entropy bonus."""
    # the supervised stages' padding and shift: the mask is 1 at positions whose *next* token was generated
    x, y, mask = collate([(c + g, [0] * len(c) + [1] * len(g)) for c, g in zip(contexts, generated)], pad_id,
                         next(model.parameters()).device)
    if fast.on_cpu(x.device):  # only the generated positions are unembedded (fast/cpu.py)
        return fast_cpu.token_logprobs(model, x, y, mask, entropy_grad)
    logp_all = F.log_softmax(model(x).float(), dim=-1)  # (N, T, V)
    logp = logp_all.gather(-1, y[..., None]).squeeze(-1)  # (N, T)
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = -(logp_all.exp() * logp_all).sum(-1)  # (N, T)
    return logp * mask, entropy * mask, mask


def learning_rate(config: RLConfig, step: int) -> float:
    """Linear warm-up, then constant, or the supervised stages' cosine (train.lr_at) decaying to 0."""
    if config.lr_schedule == "cosine":
        return lr_at(step, TrainConfig(steps=config.steps, lr=config.lr, warmup_steps=config.warmup_steps,
                                       min_lr_ratio=0.0))
    if config.lr_schedule == "constant":
        return config.lr * min(1.0, (step + 1) / max(1, config.warmup_steps))
    raise ValueError(f"unknown lr schedule {config.lr_schedule!r}: use 'constant' or 'cosine'")


class Reinforce:
    """The policy, its optimizer, the frozen start policy and the random streams; `step()` is one update."""

    def __init__(self, model: GPT, task: ModularAddition, config: RLConfig, reference: GPT | None = None):
        self.model, self.task, self.config = model, task, config
        self.tok = Tokenizer(task.config.number_format)
        self.reference = reference  # the starting policy, for the KL term and the KL log
        betas = (config.beta1, config.beta2)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=betas,
                                           weight_decay=config.weight_decay, fused=fused_adam(model))
        device = next(model.parameters()).device
        self.rng = np.random.default_rng(config.seed)  # draws the problems
        self.py_rng = random.Random(config.seed)  # draws the paraphrases
        self.generator = torch.Generator(device=device).manual_seed(config.seed)  # draws the samples
        self.step_index = 0
        self.replay: list[Problem] = []  # problems to draw again (_draw_problems)

    def step(self) -> dict:
        cfg, G = self.config, self.config.samples_per_prompt
        t0 = time.perf_counter()
        problems = self._draw_problems()
        rollout = self.rollout(problems)
        if cfg.replay_fraction > 0:  # under torchrun, learning the outcomes costs an all-reduce
            self._remember_failures(problems, self._failed_groups(rollout))
        t1 = time.perf_counter()
        adv = advantages(rollout.rewards, cfg.baseline)  # (P, G)
        informative = (adv != 0).any(1)  # (P,): groups with any signal
        every = cfg.kl_coef > 0 or cfg.entropy_coef > 0  # these terms touch every sample
        learns = lambda s: every or bool(informative[s.sample // G])
        learned = [[s for s in rollout.traces if learns(s)], [s for s in rollout.answers if learns(s)]]
        stats = self._stats(rollout, informative, learned)
        times = lambda: {"seconds_sampling": t1 - t0, "seconds_learning": time.perf_counter() - t1}
        if not self._any_process(bool(informative.any())):
            self.step_index += 1
            kl = {"kl": float("nan")} if self.reference is not None else {}
            return {**stats, "loss": 0.0, "skipped": 1.0, "entropy": float("nan"), **times(), **kl}
        loss, logged = self._loss(learned, adv.flatten(), informative)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loss = self._reduce_gradients(loss)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        check_finite(self.step_index, loss.item(), grad_norm.item(), "RL step")
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.step_index)
        self.optimizer.step()
        self.step_index += 1
        return {**stats, **logged, "loss": loss.item(), "skipped": 0.0, **times()}

    def _draw_problems(self) -> list[Problem]:
        """Fresh training problems, of which up to `replay_fraction` are instead the oldest ones a recent
        group did not solve every time: a kind of step the policy gets wrong in one problem in a hundred
        otherwise comes back too seldom for its few right samples to teach it."""
        cfg = self.config
        n_replay = min(len(self.replay), int(cfg.replay_fraction * cfg.prompts_per_step))
        replayed, self.replay = self.replay[:n_replay], self.replay[n_replay:]
        fresh = self.task.sample_train(self.rng, cfg.prompts_per_step - n_replay, k=self._num_operands())
        return fresh + replayed

    def _remember_failures(self, problems: list[Problem], failed: list[bool]) -> None:
        """Queue the problems whose group had a wrong sample (newest last); keep the newest `replay_size`."""
        unsolved = [p for p, f in zip(problems, failed) if f]
        self.replay = (self.replay + unsolved)[-self.config.replay_size:]

    # one process; rl_parallel.DataParallelReinforce spreads a step's groups over torchrun's processes
    def _failed_groups(self, rollout: Rollout) -> list[bool]:
        return (rollout.rewards < 1).any(1).tolist()

    def _stats(self, rollout: Rollout, informative: torch.Tensor, learned: list[list[Segment]]) -> dict:
        return {"reward": rollout.rewards.mean().item(),
                "informative_groups": informative.float().mean().item(),
                "trace_length": float(np.mean(rollout.lengths)), "flops": self._flops(rollout, learned)}

    def _any_process(self, flag: bool) -> bool:
        return flag

    def _reduce_gradients(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def rollout(self, problems: list[Problem]) -> Rollout:
        """Sample G completions per problem; paraphrase some traces and re-sample their answers; reward."""
        cfg, tok, G = self.config, self.tok, self.config.samples_per_prompt
        prompts = [tok.encode(prompt(p, COT)) for p in problems for _ in range(G)]
        self.model.eval()
        samples = generate(self.model, prompts, cfg.max_new_tokens, tok.newline_id, tok.pad_id,
                           temperature=cfg.temperature, top_k=cfg.top_k or None, generator=self.generator)
        written = [row[:n] for row, n in zip(samples.tokens.tolist(), samples.lengths())]
        traces, texts, reread, unreadable = [], [], [], set()
        paraphrasers = cfg.paraphraser.split(",")
        for i, ids in enumerate(written):
            text = tok.decode(ids)
            room = self.model.config.block_size - len(prompts[i]) - 2  # keep space for "answer\n"
            fits = lambda body, room=room: len(tok.encode(body)) <= room
            new_body, cannot_read = paraphrase_sampled(text, self.py_rng, cfg.paraphrase_prob, paraphrasers,
                                                       cfg.paraphrase_from_end, fits)
            if new_body is None:  # graded as written
                traces.append(Segment(prompts[i], ids, i)), texts.append(text)
                if cannot_read:
                    unreadable.add(i)
            else:  # the trace reinforced as written, the answer re-sampled after its paraphrase
                traces.append(Segment(prompts[i], tok.encode(split_answer(text)[0]), i)), texts.append(None)
                reread.append(prompts[i] + tok.encode(new_body))
        answers = self._answer_after(reread, [s.sample for s in traces if texts[s.sample] is None])
        for s in answers:  # graded: the paraphrased trace and the answer after it
            texts[s.sample] = tok.decode(s.context[len(prompts[s.sample]):] + s.tokens)
        self.model.train()
        rewards = torch.tensor([0.0 if i in unreadable else reward(problems[i // G], text, COT)
                                for i, text in enumerate(texts)]).view(len(problems), G)
        return Rollout(traces, answers, texts, rewards, [len(w) for w in written])

    def _answer_after(self, contexts: list[list[int]], owners: list[int]) -> list[Segment]:
        """The answers re-sampled after paraphrased traces (a few tokens after contexts of many lengths)."""
        if not contexts:
            return []
        cfg, tok = self.config, self.tok
        answer = generate_ragged if fast.ENABLED else generate  # one padded batch (fast/ragged.py)
        samples = answer(self.model, contexts, 4, tok.newline_id, tok.pad_id, temperature=cfg.temperature,
                         top_k=cfg.top_k or None, generator=self.generator)
        rows = [row[:n] for row, n in zip(samples.tokens.tolist(), samples.lengths())]
        return [Segment(c, row, i) for c, row, i in zip(contexts, rows, owners)]

    def _loss(self, learned: list[list[Segment]], adv: torch.Tensor, informative: torch.Tensor):
        """The policy-gradient loss over the learned segments (a batch of traces, a batch of answers: run
        apart, so traces are not padded to the answers' contexts), plus the optional entropy and KL terms;
        and the logged entropy and KL."""
        cfg, G = self.config, self.config.samples_per_prompt
        logps, masks, advs = [], [], []
        entropy_sum, n_tokens, kl_sum, kl_tokens = 0.0, 0.0, 0.0, 0.0
        with_kl = self.reference is not None and self._kl_due()
        kl_samples = self._kl_samples(learned)
        for batch in learned:
            if not batch:
                continue
            contexts, tokens = [s.context for s in batch], [s.tokens for s in batch]
            logp, entropy, mask = sequence_logprobs(self.model, contexts, tokens, self.tok.pad_id,
                                                    cfg.entropy_coef > 0)  # (S, T) each
            owners = torch.tensor([s.sample for s in batch])
            keep = informative[owners // G].float().to(logp.device)  # (S,): 0 for groups without signal
            logps.append(logp), masks.append(mask * keep[:, None])
            advs.append(adv[owners].to(logp.device) * keep)
            entropy_sum, n_tokens = entropy_sum + entropy.sum(), n_tokens + mask.sum()
            if with_kl:
                kl, count = self._kl_to_start(batch, logp, kl_samples)
                kl_sum, kl_tokens = kl_sum + kl, kl_tokens + count
        loss = policy_gradient_loss(logps, masks, advs)
        if cfg.entropy_coef > 0:
            loss = loss - cfg.entropy_coef * entropy_sum / n_tokens
        if cfg.kl_coef > 0 and self.reference is not None:
            loss = loss + cfg.kl_coef * kl_sum / kl_tokens
        logged = {"entropy": (entropy_sum / n_tokens).item()}
        if self.reference is not None:  # KL(policy || start) per token; NaN on steps that do not estimate it
            logged["kl"] = (kl_sum / kl_tokens).item() if with_kl else float("nan")
        return loss, logged

    def _kl_due(self) -> bool:
        """The KL to the start policy is estimated when it is in the loss, else every kl_log_every steps."""
        return self.config.kl_coef > 0 or self.step_index % max(1, self.config.kl_log_every) == 0

    def _kl_samples(self, learned: list[list[Segment]]) -> set[int] | None:
        """The samples whose KL to the start policy is estimated: all when the KL is in the loss, else the
        first `kl_log_samples` (the prompts are drawn independently: the first ones are a random subset)."""
        if self.config.kl_coef > 0 or self.config.kl_log_samples == 0:
            return None
        return set(sorted({s.sample for batch in learned for s in batch})[: self.config.kl_log_samples])

    def _kl_to_start(self, batch: list[Segment], logp: torch.Tensor, samples: set[int] | None):
        """The k3 estimate of KL(policy || start) summed over the segments of `samples`, and their tokens."""
        rows = [j for j, s in enumerate(batch) if samples is None or s.sample in samples]
        if not rows:
            return 0.0, 0.0
        with torch.no_grad():
            ref_logp, _, ref_mask = sequence_logprobs(self.reference, [batch[j].context for j in rows],
                                                      [batch[j].tokens for j in rows], self.tok.pad_id)
        index = torch.tensor(rows, device=logp.device)  # right-padded: the sub-batch is a prefix in time
        log_ratio = (ref_logp - logp[index, : ref_logp.shape[1]]) * ref_mask
        return ((log_ratio.exp() - 1 - log_ratio) * ref_mask).sum(), ref_mask.sum()  # k3: unbiased, >= 0

    def _flops(self, rollout: Rollout, learned: list[list[Segment]]) -> float:
        """Sampling ~ one forward per token; learning = forward + backward (3 forwards), plus the start
        policy's forward when there is one."""
        every = rollout.traces + rollout.answers
        per_token = self.model.flops_per_token(max(len(s.context) + len(s.tokens) for s in every)) / 3
        sampled = sum(len(s.context) + len(s.tokens) for s in every)
        learned_tokens = sum(len(s.context) + len(s.tokens) for batch in learned for s in batch)
        return per_token * (sampled + learned_tokens * (3 + (self.reference is not None)))

    def _num_operands(self) -> int:
        cfg = self.task.config
        if self.config.curriculum == "target":
            return cfg.num_operands
        if self.config.curriculum == "ramp":  # easiest k first, the target k for the last half
            span = cfg.num_operands - cfg.min_operands
            frac = self.step_index / max(1, self.config.steps)
            return min(cfg.num_operands, cfg.min_operands + int(frac * 2 * span + 0.5))
        return int(self.rng.integers(cfg.min_operands, cfg.num_operands + 1))

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: optimizer, step, and all three random streams."""
        version, internal, gauss = self.py_rng.getstate()
        return {"optimizer": copy.deepcopy(self.optimizer.state_dict()), "step": self.step_index,
                "numpy_rng": self.rng.bit_generator.state, "python_rng": list(internal),
                "python_rng_pos": (version, gauss), "torch_generator": self.generator.get_state(),
                "replay": [[list(p.operands), p.modulus] for p in self.replay]}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_index = state["step"]
        self.rng.bit_generator.state = state["numpy_rng"]
        version, gauss = state["python_rng_pos"]
        self.py_rng.setstate((version, tuple(state["python_rng"]), gauss))
        self.generator.set_state(state["torch_generator"])
        self.replay = [self.task.problem(ops, m) for ops, m in state.get("replay", [])]  # older saves: none


def train_rl(model: GPT, task: ModularAddition, config: RLConfig, reference: GPT | None = None,
             resume: dict | None = None, save=None, save_every: int = 0,
             trainer: Reinforce | None = None) -> dict:
    """Run REINFORCE up to config.steps; returns the run's record (per-step logs and periodic evaluations).
    `resume` is a state an earlier call handed to `save(record, trainer_state)`; the run continues exactly.
    `trainer`: another `Reinforce` to run (rl_parallel.DataParallelReinforce)."""
    torch.manual_seed(config.seed)
    if trainer is None:  # rl_parallel's, under torchrun
        trainer = Reinforce(model, task, config, reference)
    record = {"steps": [], "eval": [], "seconds": 0.0}
    if resume is not None:
        trainer.load_state_dict(resume["trainer"])
        record = resume["record"]
    check = lambda m: evaluate_cot(m, task, config.eval_problems, config.pass_problems, config.pass_k,
                                   config.temperature)
    start, elapsed_before = time.perf_counter(), record["seconds"]
    moving = record["steps"][-1]["reward_avg"] if record["steps"] else None
    saving = None if save is None else lambda state: save(record, state)
    steps = Steps(trainer.step_index, config.steps, "rl", lambda _: trainer.state_dict(), saving, save_every)
    for step in steps:
        if config.eval_every > 0 and step % config.eval_every == 0:
            record["eval"].append({"step": step, **check(model)})
        stats = trainer.step()
        moving = stats["reward"] if moving is None else 0.95 * moving + 0.05 * stats["reward"]
        record["steps"].append({"step": step, "reward_avg": moving, **stats})
        record["seconds"] = elapsed_before + time.perf_counter() - start
        shown = {"reward": f"{moving:.2f}", "len": f"{stats['trace_length']:.0f}"}
        if record["eval"]:
            shown["acc"] = f"{record['eval'][-1]['test_accuracy']:.2f}"
        steps.show(shown)
    record["eval"].append({"step": config.steps, **check(model)})
    record["seconds"] = elapsed_before + time.perf_counter() - start
    for key in ("seconds_sampling", "seconds_learning", "flops"):
        record[key] = sum(s[key] for s in record["steps"])
    return record
