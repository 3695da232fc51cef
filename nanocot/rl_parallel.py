"""REINFORCE over torchrun's processes: the step of rl.py, with a step's groups spread over the processes.

- Every process draws the same problems (the same seeded stream) and rolls out its contiguous share of the
  groups; a group stays whole on one process, so its leave-one-out baseline is computed where it lives.
- Each group samples from its own streams, seeded by (seed, step, group), so the samples do not depend on how
  the groups are split: a one-process run with `--group-streams` draws exactly the same ones, and is what a
  data-parallel run reproduces (tests/test_distributed.py).
- Each process's loss is its share of the global one (its policy-gradient sum over every process's sampled
  tokens); the gradients, and the logged reward, entropy and KL, are summed over the processes.
- Under torchrun the KL penalty and the entropy bonus are refused (their normalisers are per process); the
  logged KL to the start policy is estimated on each process's first `kl_log_samples` samples.
"""

import numpy as np
import torch

from nanocot import distributed
from nanocot.rl import Reinforce, Rollout, Segment


class DataParallelReinforce(Reinforce):
    """`Reinforce` with group streams, and with its sums taken over torchrun's processes (a world of one
    also works: a one-process run with group streams)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if distributed.WORLD.size > 1 and (self.config.kl_coef > 0 or self.config.entropy_coef > 0):
            raise ValueError("--kl and --entropy are not supported under torchrun yet")

    def rollout(self, problems) -> Rollout:
        """rl.Reinforce.rollout one group at a time, each from its own seeded streams, for this process's
        share of the groups (their samples renumbered in this process's order)."""
        G, parts = self.config.samples_per_prompt, []
        for g, problem in distributed.shard(list(enumerate(problems))):
            seed = int(np.random.SeedSequence([self.config.seed, self.step_index, g]).generate_state(1)[0])
            self.generator.manual_seed(seed)
            self.py_rng.seed(seed)
            parts.append(super().rollout([problem]))
        renumber = lambda segments, k: [Segment(s.context, s.tokens, s.sample + k * G) for s in segments]
        return Rollout([s for k, r in enumerate(parts) for s in renumber(r.traces, k)],
                       [s for k, r in enumerate(parts) for s in renumber(r.answers, k)],
                       [t for r in parts for t in r.texts], torch.cat([r.rewards for r in parts]),
                       [n for r in parts for n in r.lengths])

    def _failed_groups(self, rollout: Rollout) -> list[bool]:
        """Every group's flag, the same on every process (each knows only its own groups' rewards)."""
        n = self.config.prompts_per_step
        mine = distributed.shard(list(range(n)))
        flags = [0.0] * n
        for g, failed in zip(mine, super()._failed_groups(rollout)):
            flags[g] = float(failed)
        return [f > 0 for f in distributed.sum_over_ranks(flags)]

    def _stats(self, rollout: Rollout, informative: torch.Tensor, learned: list[list[Segment]]) -> dict:
        r, n, i, g, length, count, flops = distributed.sum_over_ranks(
            [rollout.rewards.sum().item(), rollout.rewards.numel(), informative.sum().item(),
             len(informative), sum(rollout.lengths), len(rollout.lengths), self._flops(rollout, learned)])
        return {"reward": r / n, "informative_groups": i / g, "trace_length": length / count,
                "flops": flops}

    def _any_process(self, flag: bool) -> bool:
        return distributed.any_rank(flag)  # a step is skipped only when no process has a signal

    def _loss(self, learned: list[list[Segment]], adv: torch.Tensor, informative: torch.Tensor):
        """This process's share of the global loss: its policy-gradient sum over every process's tokens."""
        G = self.config.samples_per_prompt
        segments = [s for batch in learned for s in batch]
        kl_samples = self._kl_samples(learned)
        pg_tokens = sum(len(s.tokens) for s in segments if informative[s.sample // G])
        tokens = sum(len(s.tokens) for s in segments)
        kl_tokens = sum(len(s.tokens) for s in segments if kl_samples is None or s.sample in kl_samples)
        if segments:
            loss, logged = super()._loss(learned, adv, informative)
        else:  # no signal here: a zero loss still joins the gradient sum
            loss = sum(p.sum() for p in self.model.parameters()) * 0.0
            logged = {"entropy": 0.0}
        kl_due = self._kl_due()
        kl = logged.get("kl", 0.0) if kl_due and segments else 0.0
        all_pg, all_tokens, all_kl_tokens, entropy_sum, kl_sum = distributed.sum_over_ranks(
            [pg_tokens, tokens, kl_tokens, logged["entropy"] * tokens, kl * kl_tokens])  # means back to sums
        logged["entropy"] = entropy_sum / max(all_tokens, 1)
        if self.reference is not None:
            logged["kl"] = kl_sum / max(all_kl_tokens, 1) if kl_due else float("nan")
        return loss * (pg_tokens / max(all_pg, 1)), logged

    def _reduce_gradients(self, loss: torch.Tensor) -> torch.Tensor:
        """Sum the gradients (and the logged loss) over the processes, before clipping; a process without
        a gradient for a weight adds zeros."""
        loss = loss.detach()
        distributed.sum_gradients(self.model, [loss])
        return loss
