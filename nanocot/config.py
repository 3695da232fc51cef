"""Every knob of nanocot, as dataclasses with named presets, in one place.

- `ModelConfig` presets `tiny` (tests), `small` (1 layer, 1 attention head) and `large` (2 layers, 4 heads).
  The two-layer model learned the direct answer on every seed measured. A one-layer model with 4 heads
  escaped its direct-SFT plateau on ~1 run in 3; with one head it stayed at chance on 12 of 12 seeds while
  still learning the step-by-step trace (docs/LOG.md, 2026-11-26 and 2026-11-27).
- `TaskConfig` is the modular-addition task; its defaults are the measured choice of docs/LOG.md.
- `CorpusConfig` is the toy pretraining text.
- `TrainConfig` holds the optimiser, schedule and (for warm-up/direct) the stage's operand-count mix;
  `STAGE_DEFAULTS` gives each stage's defaults.
- `RLConfig` holds REINFORCE's knobs.
"""

from dataclasses import asdict, dataclass, replace

SIZES = ("tiny", "small", "large")


@dataclass(frozen=True)
class ModelConfig:
    n_layer: int = 1
    n_head: int = 4
    d_model: int = 64
    d_mlp: int = 256  # hidden width of each MLP
    block_size: int = 96  # longest sequence the learned position table covers
    vocab_size: int = 0  # filled in from the tokenizer
    attn_impl: str = "fused"  # "fused" (F.scaled_dot_product_attention) or "reference" (explicit softmax)


MODEL_PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(n_layer=1, n_head=2, d_model=32, d_mlp=64),
    # one head: its attention output at "=" is a single average over the prompt, so the four operands and the
    # modulus cannot be routed apart into one forward pass's sum; a trace step needs only two numbers. With 2
    # or 4 heads the direct answer escaped its plateau on some seeds, with 1 on none (docs/LOG.md, 2026-11-26
    # and 2026-11-27)
    "small": ModelConfig(n_layer=1, n_head=1, d_model=64, d_mlp=64),
    # two layers: the depth contrast. They learned the direct answer on seeds where a wider one-layer model
    # did not, and the one-layer small model stays at chance (docs/LOG.md, 2026-11-26)
    "large": ModelConfig(n_layer=2, n_head=4, d_model=64, d_mlp=256),
}


@dataclass(frozen=True)
class TaskConfig:
    """Modular addition: (x1 + ... + xk) mod m.

    In distribution every operand lies in [0, m) and m in [min_modulus, max_modulus] minus the held-out
    moduli. Training mixes in easier problems (fewer operands) because pure k=4 direct SFT sits on a
    loss plateau (docs/LOG.md, 2026-11-26); held-out accuracy is always measured on k = num_operands.
    """

    num_operands: int = 4
    min_operands: int = 2  # easiest k mixed into training batches
    min_modulus: int = 10
    max_modulus: int = 29
    max_operand: int = 0  # operands lie in [0, max_operand); 0 = in [0, m), the residues of the modulus
    # write the modulus before the operands ("%21 8+7+12+5=") instead of after ("8+7+12+5%21="): a causal
    # model then knows m at every operand, so a second layer can reduce each one before the first adds them
    modulus_first: bool = False
    heldout_moduli: tuple[int, ...] = (17, 23)  # never trained on: the "unseen moduli" OOD split
    easier_fraction: float = 0.5  # share of each training batch drawn with k in [min_operands, num_operands)
    test_fraction: float = 0.02  # share of problems (by hash of the whole problem) reserved for testing
    test_size: int = 1000
    ood_size: int = 500
    split_seed: int = 0  # which problems are test problems: fixed, so every seed shares one test set
    number_format: str = "tokens"  # "tokens": one token per number; "digits": one token per digit


@dataclass(frozen=True)
class CorpusConfig:
    """The toy pretraining text (nanocot/corpus.py)."""

    num_lines: int = 60_000
    worked_fraction: float = 0.0  # share of lines that are full worked k-operand traces of training problems
    seed: int = 1234


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 250
    seed: int = 0
    # direct/warmup: share of this stage's problems with fewer operands; None = the task's easier_fraction
    easier_fraction: float | None = None
    # warmup: share of examples that teach reading a paraphrased trace (data.reading_example), and with which
    # paraphrasers (comma-separated names from nanocot/paraphrase.py)
    paraphrase_fraction: float = 0.0
    read_paraphrasers: str = "reword,words"
    # of those, the share whose paraphrase runs from the last step back (paraphrase.paraphrase_body's
    # from_end): when a rewrite does not fit the context whole, from the front it leaves the last step, whose
    # value the answer repeats, as written, so a reader never has to read the rewritten value
    read_from_end: float = 0.0
    # warmup: share of examples that rehearse the direct answer (the direct prompt, loss on the answer), so a
    # model that could answer without a trace keeps that ability while it learns to write one (large-cot,
    # controls.py); 0 = none
    direct_fraction: float = 0.0
    # warmup: share of the trace examples that are single steps balanced by operand pair and decision
    # (ModularAddition.sample_balanced_steps); 0 = none
    balanced_steps: float = 0.0
    # direct/warmup: stop at the first evaluation whose accuracy on 300 training-split problems reaches this
    # (0 = run every step), e.g. a warm-up that leaves REINFORCE a known gap whenever chaining appears
    stop_accuracy: float = 0.0
    # with stop_accuracy: end at the evaluation before the first one reaching it when that one was nearer the
    # threshold (sft.AccuracyStop). Off by default: it keeps a warm-up from overshooting, but also moves other
    # seeds' starts lower, and on seed 0 REINFORCE then ran longer to a lower end (docs/LOG.md, 2026-11-27)
    stop_nearest: bool = False
    # with stop_accuracy: search the steps since the evaluation before for one where accuracy crosses the
    # threshold (sft.AccuracyStop), so a warm-up whose chaining jumps past it between two evaluations still
    # stops near it (docs/LOG.md, 2026-12-03); the other way to stop near it is stop_nearest, not both
    stop_bisect: bool = False


@dataclass(frozen=True)
class RLConfig:
    """REINFORCE's knobs (nanocot/rl.py). The defaults take the one-head small model from a warm-up stopped
    at 70% to within a point or two of the large model in 1,750 steps (docs/LOG.md, 2026-11-27 and
    2026-12-04)."""

    steps: int = 1750  # REINFORCE in four minutes on one CPU thread (docs/LOG.md, 2026-12-04)
    prompts_per_step: int = 32
    samples_per_prompt: int = 8
    lr: float = 4e-4  # with the warm-up and cosine below; 1e-3 collapsed
    beta1: float = 0.99  # one batch's policy gradient is mostly noise: follow a ~100-step average of it
    beta2: float = 0.999
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 300  # Adam's first steps are full-size whatever the gradient's noise
    lr_schedule: str = "cosine"  # "constant" or "cosine" (to 0 at the last step: less noise at the end)
    temperature: float = 0.7  # the hard tail needs the minority choice explored; 0.5 and 1.0 learned slower
    top_k: int = 0  # 0 = no top-k filtering
    baseline: str = "loo"  # "loo" (leave-one-out), "mean" (group mean) or "none" (advantage = reward)
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    # with the KL penalty off, the logged KL to the start policy is estimated on this many learned samples
    # (0 = all) every `kl_log_every`-th step (NaN between): the start policy's forward is not free
    kl_log_samples: int = 64
    kl_log_every: int = 10
    curriculum: str = "target"  # "target": always k; "mixed": k in [min_operands, k]; "ramp": easy first
    # without paraphrase in the loop, a long REINFORCE wears away the warm-up's reading of reworded traces
    paraphrase_prob: float = 0.15
    paraphraser: str = "reword,words"  # comma-separated; one drawn per paraphrased sample
    # share of the paraphrased samples rewritten from the last step back (as the warm-up's read_from_end)
    paraphrase_from_end: float = 0.5
    # share of each step's problems drawn again from the newest `replay_size` that a group did not solve
    # every time (rl.Reinforce._draw_problems). Off: it did not lift the cells the small model gets wrong
    # (docs/LOG.md, 2026-12-03, "ten runs")
    replay_fraction: float = 0.0
    replay_size: int = 256
    max_new_tokens: int = 80
    # each group of G samples from its own random stream, seeded by (seed, step, group): the same samples
    # however the groups are split over processes; always on under torchrun (rl_parallel.py)
    group_streams: bool = False
    eval_every: int = 250
    eval_problems: int = 300
    pass_k: int = 8
    pass_problems: int = 100
    seed: int = 0


STAGES = ("pretrain", "direct", "warmup", "ignore")
# the checkpoint a stage starts from by default (train_sft.py --start): the negative control `ignore` needs a
# model that already answers without a trace (controls.py)
STAGE_STARTS = {"direct": "pretrain", "warmup": "pretrain", "ignore": "direct"}

STAGE_DEFAULTS: dict[str, TrainConfig] = {
    # 3,000 steps: the CoT warm-up needs the one-step arithmetic pretraining teaches, and 500 steps left it
    # too weak for a warm-up to build on (docs/LOG.md, 2026-11-26)
    "pretrain": TrainConfig(steps=3000, batch_size=32, lr=3e-3, eval_every=500),
    # lr 6e-3: the large model leaves the direct-SFT plateau more often than at 3e-3. Decayed to 0: with a
    # floor the accuracy still jumps ~10 points between evaluations, and a run can end on a dip (docs/LOG.md,
    # 2026-11-26)
    "direct": TrainConfig(steps=10000, batch_size=128, lr=6e-3, min_lr_ratio=0.0, eval_every=500),
    # CoT warm-up on reference traces of 2..4 operands (the task's mix), stopped at the first evaluation
    # (every 25 steps) reaching 70% on training-split problems, then back to a step where it crossed 70%
    # (stop_bisect): run to the end it leaves REINFORCE no gap, and chaining appears too suddenly to stop by
    # step count; 2,000 steps caps a seed where it never appears (docs/LOG.md, 2026-11-27 and 2026-12-03).
    # 30% of its examples teach *reading* a paraphrased trace (loss on the answer only), without which the
    # model cannot read its own reworded traces (docs/LOG.md, 2026-11-26); two in three of those are
    # translations into English, which after REINFORCE read 99% where half as many read 93% (docs/LOG.md,
    # 2026-12-03). Half are rewritten from the last step back (it matters only for a rewrite too long for the
    # context)
    # Half of its trace examples are single steps balanced by operand pair and by decision: outcome reward
    # reaches a step's rule only when that step is last and only as often as the task draws it, so the rare
    # facts (large operands, the small moduli's exceptions) are the warm-up's to teach; with the task's own
    # mix REINFORCE left them wrong on 3 runs in 10 (docs/LOG.md, 2026-12-04)
    "warmup": TrainConfig(steps=2000, batch_size=128, lr=1e-3, eval_every=25, paraphrase_fraction=0.3,
                          read_paraphrasers="reword,words,words", stop_accuracy=0.7, stop_bisect=True,
                          read_from_end=0.5, balanced_steps=0.5),
    # the negative control (controls.py): the large direct model taught to write traces with random values
    # before its true answer; no reading examples (its answer is not meant to read the trace)
    "ignore": TrainConfig(steps=500, batch_size=128, lr=1e-3, eval_every=100),
}


def model_config(size: str, vocab_size: int) -> ModelConfig:
    if size not in MODEL_PRESETS:
        raise ValueError(f"unknown size {size!r}: choose one of {', '.join(SIZES)}")
    return replace(MODEL_PRESETS[size], vocab_size=vocab_size)


def to_dict(config) -> dict:
    """Plain dict (tuples become lists) so a checkpoint stays loadable with weights_only=True."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def from_dict(cls, d: dict):
    names = {f.name for f in cls.__dataclass_fields__.values()}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


__all__ = [
    "SIZES", "STAGES", "ModelConfig", "TaskConfig", "CorpusConfig", "TrainConfig", "RLConfig",
    "MODEL_PRESETS", "STAGE_DEFAULTS", "STAGE_STARTS", "model_config", "to_dict", "from_dict"
]
