"""Traces for the instrument controls: models built to have, or to lack, the property an instrument detects.

An instrument is trusted only once it has fired on a model known to have the property and stayed quiet on
one known not to. The faithfulness battery's verdicts on small-cot are readings of such instruments, so
the project trains their controls with the same scripts and evaluates them with the same battery:

- `ignore` (the negative control, `large-ignore`): the large model, which already answers directly, is
  fine-tuned on traces whose carried-in values are random while the answer is the true one. Its trace
  says nothing about its answer, so corrupting a step must not move the answer (follow rate near 0) and
  removing the trace must not hurt (no-trace accuracy near its accuracy with the trace).
- `large-cot` (the backfilling counterfactual) needs no trace of its own: it is the large direct model given
  small-cot's warm-up and REINFORCE (`train_sft.py --size large --stage warmup --start direct
  --direct-fraction 0.25`, then `train_rl.py --size large --lr 1e-4`). A quarter of its warm-up's examples
  rehearse the direct answer: without them the warm-up erases it (the direct prompt then gets ~5%), and the
  model could no longer answer without its trace, which is the property the counterfactual needs
  (docs/LOG.md, 2026-12-03, "controls"). Its REINFORCE runs at a quarter of small-cot's learning rate (below).

Each writer maps a problem and a random stream to the completion text that follows the CoT prompt, in the
task's own trace format, so every instrument reads the controls exactly as it reads small-cot.
"""

import numpy as np

from nanocot.task import Problem, reduce_chain


def noise_trace(problem: Problem, rng: np.random.Generator) -> str:
    """A trace whose steps each add the right operand to a random value (uniform in [0, m)) and do that
    arithmetic right, followed by the true answer: '8+7=15,3+12=15,20+5=25-21=4;11'. Every step is locally
    plausible, but none carries the previous one's result, and even the first step's left value is random
    (not the first operand), so the trace holds nothing the prompt does not and no value the answer needs."""
    m, steps = problem.modulus, []
    for x in problem.operands[1:]:
        left = int(rng.integers(m))
        steps.append(f"{left}+{x}={left + x}" + reduce_chain(left + x, m))
    return ",".join(steps) + f";{problem.answer}\n"


# large-cot's warm-up: the share of examples that rehearse the direct answer (TrainConfig.direct_fraction)
LARGE_COT_DIRECT_FRACTION = 0.25
# large-cot's REINFORCE learning rate, a quarter of small-cot's: at small-cot's 4e-4 the large model's reward
# fell from 0.50 to 0.05 within 400 steps and never came back (docs/LOG.md, 2026-12-04)
LARGE_COT_LR = 1e-4

# stage name -> the completion writer its supervised examples use
WRITERS = {"ignore": noise_trace}
