"""REINFORCE on outcome reward: the seed's "reward the entire chain of thought when the answer is right".

- Each step: P training problems, G sampled completions each (temperature T), reward 1/0 from the final
  answer only (task.reward: no format or step reward).
- Advantage = reward - baseline; the baseline is leave-one-out (mean of the other G-1 rewards of the same
  prompt, default) or the group mean. A group whose G rewards are all equal carries no signal: its
  advantages are exactly zero, and it is left out of the token count, so it does not dilute the others.
- Loss = -sum(advantage * log-prob of every sampled token) / (number of sampled tokens in informative
  groups); the prompt is never in the loss. A step with no informative group is skipped entirely: Adam
  would otherwise turn a zero gradient plus stale momentum into a full-size step (CALIBRATION.md's
  collapse from a 12% start).
- Temperature shapes only which traces are drawn; the update always uses the model's own (T = 1)
  log-probs. At T < 1 this is therefore not the exact gradient of the sampled policy's reward: it
  reinforces the right traces among the model's likelier ones (measured to learn faster: docs/LOG.md).
- Optional: KL penalty to the starting policy and an entropy bonus (both off by default).
- Paraphrase in the loop (`paraphrase_prob`): the sampled trace is rewritten (e.g. operands swapped) and
  the answer is re-sampled after the rewritten trace; the reward is on that answer. The trace tokens are
  reinforced in their own context, the answer tokens in the paraphrased one. A trace drawn for paraphrase
  that the paraphraser cannot read earns 0: when it kept its own reward, the policy learned to append a
  stray number to each trace (`...,10+8=18 9;18`) so that no paraphraser touched it.
"""

import copy
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from nanocot.config import TrainConfig
from nanocot.data import collate
from nanocot.metrics import cot_completions
from nanocot.model import GPT
from nanocot.paraphrase import PARAPHRASERS, paraphrase_body, parse_body
from nanocot.sampling import generate, generate_ragged
from nanocot.task import COT, ModularAddition, Problem, prompt, reward
from nanocot.tokenizer import Tokenizer
from nanocot.trace import split_answer
from nanocot.train import SELECTIVE_UNEMBED_DEVICES, fused_adam, lr_at, stop_requests


@dataclass(frozen=True)
class RLConfig:
    """Defaults measured in docs/LOG.md (sessions 3, 9 and 10): from the warm-up stopped at 70% (73-80% held-out),
    2,000 steps take the one-head small model to 97.6-99.1%, within 3 points of the large one on three seeds, in
    218-229 s here (session 12; session 10, before paraphrases from the end: 97.3-98.9% in 195-224 s; session 9's
    2,500 steps: 98.1-99.2% in 244-292 s). Where the recipe of session 3
    (lr 1e-4, T 0.5, constant, 600 steps) got seed 0 from 66% to 88% in 1,500 steps, this one gets it to 94%; the
    rest of the gap was the warm-up's stopping point (session 9)."""

    steps: int = 2000
    prompts_per_step: int = 32
    samples_per_prompt: int = 8
    lr: float = 4e-4  # with the warm-up and the cosine below; 1e-3 collapsed (66% -> 6%), 4e-4 constant dipped to 45%
    # beta1 0.99: Adam's step follows a ~100-step average of the gradient. One batch's policy gradient is mostly
    # noise (cosine 0.14 with a 4,096-sample estimate), and a noisy step in this tiny model's sensitive
    # directions costs accuracy; with beta1 0.9 every recipe tried drifted down.
    beta1: float = 0.99
    beta2: float = 0.999  # Adam's squared-gradient average
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # linear lr warm-up: Adam's first steps are full-size whatever the gradient's noise (without one, 2e-4 fell from
    # 66% to 59% in the first 50 steps, 4e-4 to 45%, and spent ~200 steps climbing back)
    warmup_steps: int = 300
    lr_schedule: str = "cosine"  # "constant" or "cosine" (to 0 at the last step: less noise at the end)
    # T 0.7 beat 0.5 and 1.0 from the one-head model's partial warm-ups (the hard tail needs the minority choice
    # explored: a reduction the model takes with p = 0.3 is drawn 15% of the time at T 0.5); T 0.5 was best for
    # session 3's four-head model
    temperature: float = 0.7
    top_k: int = 0  # 0 = no top-k filtering
    baseline: str = "loo"  # "loo" (leave-one-out), "mean" (group mean) or "none" (advantage = reward)
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    # With the KL penalty off, the logged KL to the start policy is estimated on this many of the step's learned
    # samples (0 = all of them): the start policy's forward over every learned sample cost 16% of a step; and only
    # every `kl_log_every`-th step (the others log NaN): at 64 samples it was still 6% of every step (session 11)
    kl_log_samples: int = 64
    kl_log_every: int = 10
    curriculum: str = "target"  # "mixed": k uniform in [min_operands, k] per step; "target": always k; "ramp": easy -> hard
    # Paraphrase in the loop, on by default: 2,500 steps without it wore away the warm-up's reading of reworded
    # traces (seed 0: reword 98.6 -> 46.5%, number words 97.2 -> 45.9%; session 9). At 2,000 steps with a tenth of
    # the answers re-sampled after a reworded or spelled-out trace, seed 1 read them at 94.8 / 95.7% (mean gap with
    # swap 3.2 points); 0.15 kept the gap at or under 1.9 on six seeds for 4-5% more time per run (0.2: 10% more, and
    # seed 0 ended at 94.4%; docs/LOG.md, session 10). Those number-word rates were measured with the last step left
    # in digits; spelled out, it was read 3-25% of the time (session 12; paraphrase_from_end below)
    paraphrase_prob: float = 0.15
    paraphraser: str = "reword,words"  # comma-separated; one drawn per paraphrased sample
    # share of the paraphrased samples rewritten from the last step back (config.STAGE_DEFAULTS["warmup"] says why)
    paraphrase_from_end: float = 0.5
    max_new_tokens: int = 80
    eval_every: int = 250  # each evaluation decodes 1,100 completions (~1 s on one CPU thread)
    eval_problems: int = 300
    pass_k: int = 8
    pass_problems: int = 100
    seed: int = 0


def advantages(rewards: torch.Tensor, baseline: str) -> torch.Tensor:
    """rewards (P, G) -> advantages (P, G). Leave-one-out: r_i - mean_{j != i} r_j.

    "none" is REINFORCE without a baseline: with 0/1 rewards a right trace is reinforced and a wrong one
    is simply ignored (never pushed down), i.e. supervised learning on the model's own right traces.
    Higher variance in theory, but it cannot drive the policy away from what already works."""
    G = rewards.shape[1]
    if baseline == "none":
        return rewards.clone()
    if baseline == "mean":
        return rewards - rewards.mean(1, keepdim=True)
    if baseline == "loo":
        return rewards - (rewards.sum(1, keepdim=True) - rewards) / (G - 1)
    raise ValueError(f"unknown baseline {baseline!r}: use 'loo', 'mean' or 'none'")


def sequence_logprobs(model: GPT, contexts: list[list[int]], generated: list[list[int]], pad_id: int,
                      entropy_grad: bool = False):
    """Per-token log-probs (and entropies) of `generated[i]` after `contexts[i]`, padded: (N, T) each,
    plus the 0/1 mask of real generated tokens. The entropy carries a gradient only with `entropy_grad`
    (an entropy bonus); otherwise it is a logged number and needs no graph."""
    device = next(model.parameters()).device
    # the supervised stages' padding and shift; the mask is 1 at positions whose *next* token was generated
    x, y, mask = collate([(c + g, [0] * len(c) + [1] * len(g)) for c, g in zip(contexts, generated)], pad_id, device)
    if device.type not in SELECTIVE_UNEMBED_DEVICES:  # every position (train.SELECTIVE_UNEMBED_DEVICES says why)
        logp_all = F.log_softmax(model(x).float(), dim=-1)  # (N, T, V)
        logp = logp_all.gather(-1, y[..., None]).squeeze(-1)
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp * mask, entropy * mask, mask
    keep = mask > 0  # only the generated positions (about 2 in 3)
    logp_kept = F.log_softmax(model.logits_at(x, keep).float(), dim=-1)  # (n, V)
    logp, entropy = torch.zeros_like(mask), torch.zeros_like(mask)
    logp[keep] = logp_kept.gather(-1, y[keep][:, None]).squeeze(-1)
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy[keep] = -(logp_kept.exp() * logp_kept).sum(-1)
    return logp, entropy, mask


def learning_rate(config: RLConfig, step: int) -> float:
    """Linear warm-up over `warmup_steps`, then constant, or the supervised stages' cosine (train.lr_at)
    decaying to 0 at `steps`."""
    if config.lr_schedule == "cosine":
        return lr_at(step, TrainConfig(steps=config.steps, lr=config.lr, warmup_steps=config.warmup_steps, min_lr_ratio=0.0))
    if config.lr_schedule == "constant":
        return config.lr * min(1.0, (step + 1) / max(1, config.warmup_steps))
    raise ValueError(f"unknown lr schedule {config.lr_schedule!r}: use 'constant' or 'cosine'")


class Reinforce:
    """Holds the policy, its optimizer and the starting policy; `step()` does one on-policy update."""

    def __init__(self, model: GPT, task: ModularAddition, config: RLConfig, reference: GPT | None = None):
        self.model, self.task, self.config = model, task, config
        self.tok = Tokenizer(task.config.number_format)
        self.reference = reference  # frozen starting policy, for the KL term and the KL log
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(config.beta1, config.beta2),
                                           weight_decay=config.weight_decay, fused=fused_adam(model))
        self.rng = np.random.default_rng(config.seed)
        self.py_rng = random.Random(config.seed)
        self.generator = torch.Generator(device=next(model.parameters()).device).manual_seed(config.seed)
        self.step_index = 0

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: optimizer, step, and all three random streams."""
        return {"optimizer": copy.deepcopy(self.optimizer.state_dict()), "step": self.step_index,
                "numpy_rng": self.rng.bit_generator.state, "python_rng": list(self.py_rng.getstate()[1]),
                "python_rng_pos": self.py_rng.getstate()[0:1] + self.py_rng.getstate()[2:],
                "torch_generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_index = state["step"]
        self.rng.bit_generator.state = state["numpy_rng"]
        version, gauss = state["python_rng_pos"]
        self.py_rng.setstate((version, tuple(state["python_rng"]), gauss))
        self.generator.set_state(state["torch_generator"])

    def _num_operands(self) -> int:
        cfg = self.task.config
        if self.config.curriculum == "target":
            return cfg.num_operands
        if self.config.curriculum == "ramp":  # easiest k first, the target k for the last half
            frac = self.step_index / max(1, self.config.steps)
            span = cfg.num_operands - cfg.min_operands
            return min(cfg.num_operands, cfg.min_operands + int(frac * 2 * span + 0.5))
        return int(self.rng.integers(cfg.min_operands, cfg.num_operands + 1))

    def _sample(self, problems: list[Problem]):
        """Sample G completions per problem; apply paraphrase-in-the-loop; return segments and rewards."""
        cfg, tok = self.config, self.tok
        G = cfg.samples_per_prompt
        prompts = [tok.encode(prompt(p, COT)) for p in problems for _ in range(G)]
        self.model.eval()
        samples = generate(self.model, prompts, cfg.max_new_tokens, tok.newline_id, tok.pad_id,
                           temperature=cfg.temperature, top_k=cfg.top_k or None, generator=self.generator)
        rows = [row[:n] for row, n in zip(samples.tokens.tolist(), samples.lengths())]
        contexts, generated, owner, texts = [], [], [], []
        paraphrased_at = []  # (sample index, context for the re-sampled answer)
        unreadable = set()  # drawn for paraphrase, but the paraphraser could not read the trace: reward 0
        names = cfg.paraphraser.split(",")  # one of them is drawn per paraphrased sample
        for i, ids in enumerate(rows):
            text = tok.decode(ids)
            parts = split_answer(text)
            if cfg.paraphrase_prob > 0 and parts and self.py_rng.random() < cfg.paraphrase_prob:
                name = names[self.py_rng.randrange(len(names))] if len(names) > 1 else names[0]
                steps = parse_body(parts[0])
                room = self.model.config.block_size - len(prompts[i]) - 2  # keep space for "answer\n"
                if steps is None:  # without this, the policy learns to dodge the defence (docs/LOG.md, session 3)
                    unreadable.add(i)
                else:  # the longest prefix of steps whose paraphrase fits, as in the warm-up and the evaluation
                    # (`words` spells numbers a letter per token: a whole 4-step trace fits 5% of the time)
                    fits = lambda b, room=room: len(tok.encode(b)) <= room
                    from_end = cfg.paraphrase_from_end > 0 and self.py_rng.random() < cfg.paraphrase_from_end
                    new_body, paraphrased = paraphrase_body(PARAPHRASERS[name], steps, self.py_rng, fits, from_end)
                    if paraphrased:
                        contexts.append(prompts[i]), generated.append(tok.encode(parts[0])), owner.append(i)
                        paraphrased_at.append((i, prompts[i] + tok.encode(new_body)))
                        texts.append(None)
                        continue
            contexts.append(prompts[i]), generated.append(ids), owner.append(i)
            texts.append(text)
        if paraphrased_at:  # re-sample the answers after the paraphrased traces
            answer_prompts = [c for _, c in paraphrased_at]
            answers = generate_ragged(self.model, answer_prompts, 4, tok.newline_id, tok.pad_id,
                                      temperature=cfg.temperature, top_k=cfg.top_k or None, generator=self.generator)
            for (i, ctx), row, n in zip(paraphrased_at, answers.tokens.tolist(), answers.lengths()):
                contexts.append(ctx), generated.append(row[:n]), owner.append(i)
                texts[i] = tok.decode(ctx[len(prompts[i]):] + row[:n])  # the paraphrased completion
        self.model.train()
        rewards = torch.tensor([0.0 if i in unreadable else reward(problems[i // G], texts[i], COT)
                                for i in range(len(rows))])
        return contexts, generated, owner, rewards.view(len(problems), G), texts, rows

    def _learning_sums(self, contexts, generated, owner, adv, informative, learn: list[int], n_samples: int,
                       with_kl: bool) -> dict:
        """Sums over the learned segments (`learn`) of: advantage x log-prob (with gradient), informative tokens,
        entropy, tokens, and the KL estimate to the start policy with its token count (over every learned
        segment when the KL is in the loss, else over the first `kl_log_samples` learned samples: the prompts
        are drawn independently, so the first ones are a random subset). The answers re-sampled after
        paraphrased traces (segments from n_samples on) sit in contexts about twice a trace's length: they are
        run apart, so the traces are not padded to their length. `with_kl` False: no start-policy forward."""
        cfg = self.config
        G = cfg.samples_per_prompt
        kl_owners = None  # the samples whose KL to the start policy is estimated; None = all
        if cfg.kl_coef == 0 and cfg.kl_log_samples > 0:
            kl_owners = set(sorted({owner[s] for s in learn})[: cfg.kl_log_samples])
        total = {"pg": 0.0, "tokens": 0.0, "entropy": 0.0, "kl": 0.0, "kl_count": 0.0, "count": 0.0}
        for part in ([s for s in learn if s < n_samples], [s for s in learn if s >= n_samples]):
            if not part:
                continue
            ctx, gen = [contexts[s] for s in part], [generated[s] for s in part]
            owner_t = torch.tensor([owner[s] for s in part])
            logp, entropy, mask = sequence_logprobs(self.model, ctx, gen, self.tok.pad_id, cfg.entropy_coef > 0)
            seg_adv = adv.flatten()[owner_t].to(logp.device)  # (S,) advantage of each segment's sample
            seg_informative = informative[owner_t // G].float().to(logp.device)
            total["pg"] = total["pg"] + ((seg_adv * seg_informative)[:, None] * logp).sum()
            total["tokens"] = total["tokens"] + (mask.sum(1) * seg_informative).sum()
            total["entropy"] = total["entropy"] + entropy.sum()
            total["count"] = total["count"] + mask.sum()
            if not with_kl:
                continue
            logged = [j for j, s in enumerate(part) if kl_owners is None or owner[s] in kl_owners]
            if logged:
                with torch.no_grad():
                    ref_logp, _, ref_mask = sequence_logprobs(self.reference, [ctx[j] for j in logged],
                                                              [gen[j] for j in logged], self.tok.pad_id)
                rows = torch.tensor(logged, device=logp.device)  # right-padded: the sub-batch is a prefix in time
                log_ratio = (ref_logp - logp[rows, : ref_logp.shape[1]]) * ref_mask
                total["kl"] = total["kl"] + ((log_ratio.exp() - 1 - log_ratio) * ref_mask).sum()  # k3 estimator, >= 0
                total["kl_count"] = total["kl_count"] + ref_mask.sum()
        return total

    def step(self) -> dict:
        cfg = self.config
        t0 = time.perf_counter()
        problems = self.task.sample_train(self.rng, cfg.prompts_per_step, k=self._num_operands())
        contexts, generated, owner, rewards, texts, rows = self._sample(problems)
        t1 = time.perf_counter()

        adv = advantages(rewards, cfg.baseline)  # (P, G)
        # groups whose advantages are all zero carry no signal: skip them (and their tokens in the normaliser)
        informative = (adv != 0).any(1)  # (P,)
        G = cfg.samples_per_prompt
        stats = {"reward": rewards.mean().item(), "informative_groups": informative.float().mean().item(),
                 "trace_length": float(np.mean([len(r) for r in rows]))}
        # The policy gradient of an uninformative group is exactly zero, so only informative groups' samples
        # are run forward and backward (40-70% of them in a typical run). A KL or entropy term touches every
        # sample, so with either on, all are. Entropy and KL are logged over the samples learned from.
        every = cfg.kl_coef > 0 or cfg.entropy_coef > 0
        learn = [s for s, i in enumerate(owner) if every or informative[i // G]]
        fwd_per_token = self.model.flops_per_token(max(len(c) + len(g) for c, g in zip(contexts, generated))) / 3
        sampled_tokens = sum(len(c) + len(g) for c, g in zip(contexts, generated))
        learned_tokens = sum(len(contexts[s]) + len(generated[s]) for s in learn)
        # FLOPs: sampling ~ one forward per token; learning = forward + backward (3 forwards) and, for the
        # KL log, the start policy's forward
        stats["flops"] = fwd_per_token * (sampled_tokens + learned_tokens * (3 + (self.reference is not None)))
        if not informative.any():
            stats.update(loss=0.0, skipped=1.0, entropy=float("nan"), seconds_sampling=t1 - t0,
                         seconds_learning=time.perf_counter() - t1, **({"kl": float("nan")} if self.reference is not None else {}))
            self.step_index += 1
            return stats
        with_kl = self.reference is not None and (cfg.kl_coef > 0 or self.step_index % max(1, cfg.kl_log_every) == 0)
        total = self._learning_sums(contexts, generated, owner, adv, informative, learn, len(rows), with_kl)
        stats["entropy"] = (total["entropy"] / total["count"]).item()
        if self.reference is not None:  # KL(policy || start) per token; NaN on the steps that do not estimate it
            stats["kl"] = (total["kl"] / total["kl_count"]).item() if with_kl else float("nan")
        loss = -total["pg"] / total["tokens"]
        if cfg.entropy_coef > 0:
            loss = loss - cfg.entropy_coef * total["entropy"] / total["count"]
        if cfg.kl_coef > 0 and self.reference is not None:
            loss = loss + cfg.kl_coef * total["kl"] / total["kl_count"]  # every learned segment
        if not torch.isfinite(loss):  # stop before the bad update; the last saved checkpoint stays good
            raise FloatingPointError(f"non-finite loss at RL step {self.step_index}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        if not torch.isfinite(norm):
            raise FloatingPointError(f"non-finite gradient at RL step {self.step_index}")
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.step_index)
        self.optimizer.step()
        self.step_index += 1
        stats.update(loss=loss.item(), skipped=0.0, seconds_sampling=t1 - t0, seconds_learning=time.perf_counter() - t1)
        return stats


@torch.no_grad()
def evaluate_cot(model: GPT, task: ModularAddition, config: RLConfig, seed: int = 1234) -> dict:
    """Held-out greedy accuracy, sampled pass@1 and pass@k (k = config.pass_k) at the RL temperature."""
    tok = Tokenizer(task.config.number_format)
    model.eval()
    test = task.test_set()
    greedy = cot_completions(model, tok, test[: config.eval_problems])
    accuracy = float(np.mean([reward(p, t) for p, t in zip(test, greedy)]))
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    problems = test[: config.pass_problems]
    repeated = [p for p in problems for _ in range(config.pass_k)]
    texts = cot_completions(model, tok, repeated, greedy=False, temperature=config.temperature, generator=gen)
    hits = np.array([reward(p, t) for p, t in zip(repeated, texts)]).reshape(len(problems), config.pass_k)
    model.train()
    return {"test_accuracy": accuracy, "pass@1": float(hits.mean()), f"pass@{config.pass_k}": float(hits.max(1).mean())}


def train_rl(model: GPT, task: ModularAddition, config: RLConfig, reference: GPT | None = None,
             resume: dict | None = None, save=None, save_every: int = 0) -> dict:
    """Run REINFORCE up to config.steps; returns the run's record (per-step logs and periodic evals).

    `resume` is a state saved by an earlier call (through `save(record, trainer_state)`, every
    `save_every` steps); the run continues from its step with the same optimizer and random streams.
    """
    torch.manual_seed(config.seed)
    trainer = Reinforce(model, task, config, reference)
    record = {"steps": [], "eval": [], "seconds": 0.0}
    if resume is not None:
        trainer.load_state_dict(resume["trainer"])
        record = resume["record"]
    start, elapsed_before = time.perf_counter(), record["seconds"]
    moving = record["steps"][-1]["reward_avg"] if record["steps"] else None
    bar = tqdm(range(trainer.step_index, config.steps), desc="rl", dynamic_ncols=True,
               initial=trainer.step_index, total=config.steps)
    with stop_requests() as stop:  # Ctrl-C/SIGTERM stop between steps, never inside an optimizer update
        for step in bar:
            if stop.is_set():  # keep every finished step: save a resumable state, then stop
                if save is not None and record["steps"]:
                    save(record, trainer.state_dict())
                raise KeyboardInterrupt
            if config.eval_every > 0 and step % config.eval_every == 0:
                record["eval"].append({"step": step, **evaluate_cot(model, task, config)})
            stats = trainer.step()
            moving = stats["reward"] if moving is None else 0.95 * moving + 0.05 * stats["reward"]
            record["steps"].append({"step": step, "reward_avg": moving, **stats})
            bar.set_postfix({"reward": f"{moving:.2f}", "len": f"{stats['trace_length']:.0f}",
                             **({"acc": f"{record['eval'][-1]['test_accuracy']:.2f}"} if record["eval"] else {})},
                            refresh=False)
            record["seconds"] = elapsed_before + time.perf_counter() - start
            if save is not None and save_every > 0 and (step + 1) % save_every == 0 and step + 1 < config.steps:
                save(record, trainer.state_dict())
    record["eval"].append({"step": config.steps, **evaluate_cot(model, task, config)})
    record["seconds"] = elapsed_before + time.perf_counter() - start
    record["seconds_sampling"] = sum(s["seconds_sampling"] for s in record["steps"])
    record["seconds_learning"] = sum(s["seconds_learning"] for s in record["steps"])
    record["flops"] = sum(s["flops"] for s in record["steps"])
    return record
