"""REINFORCE on outcome reward: the small model learns to chain its own step-by-step traces.

    python train_rl.py                       # small, from out/small-warmup.pt (else small-pretrain.pt)
    python train_rl.py --paraphrase-prob 0   # no paraphrase in the loop (default: 15% of the traces)
    python train_rl.py --resume              # continue an interrupted run from out/small-cot.pt

Writes DIR/<size>-cot.pt (atomically, also every --save-every steps) and DIR/<size>-cot.png.
"""

import copy
from dataclasses import fields, replace
from pathlib import Path

from nanocot import checkpoint, distributed
from nanocot.checkpoint import build_model
from nanocot.cli import (
    Parser,
    ResumableSaves,
    UsageError,
    adam_beta,
    add_run_flags,
    first_paragraph,
    nonnegative_float,
    nonnegative_int,
    paraphraser_names,
    positive_float,
    positive_int,
    probability,
    run_cli,
    setup_run,
)
from nanocot.config import SIZES, RLConfig, TaskConfig, from_dict, to_dict
from nanocot.paraphrase import PARAPHRASERS
from nanocot.plots import plot_rl
from nanocot.rl import train_rl
from nanocot.rl_parallel import DataParallelReinforce
from nanocot.task import ModularAddition
from nanocot.tokenizer import Tokenizer


def parse_args(argv=None):
    d = RLConfig()
    p = Parser(description=first_paragraph(__doc__), prog="train_rl.py")
    p.add_argument("--size", choices=SIZES, default="small", help="model preset (default: small)")
    p.add_argument("--init", choices=["auto", "warmup", "pretrain"], default="auto",
                   help="starting checkpoint: <size>-warmup.pt, <size>-pretrain.pt, or auto = warmup if it "
                        "exists (default: auto)")
    p.add_argument("--steps", type=positive_int,
                   help=f"RL steps (default: {d.steps}; with --resume, the saved run's)")
    p.add_argument("--prompts", type=positive_int, default=d.prompts_per_step,
                   help=f"problems per step (default: {d.prompts_per_step})")
    p.add_argument("--samples", type=positive_int, default=d.samples_per_prompt,
                   help=f"sampled completions per problem, G >= 2 (default: {d.samples_per_prompt})")
    p.add_argument("--lr", type=positive_float, default=d.lr, help=f"AdamW learning rate (default: {d.lr})")
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default=d.lr_schedule,
                   help=f"constant, or a cosine decay to 0 at the last step (default: {d.lr_schedule})")
    p.add_argument("--beta1", type=adam_beta, default=d.beta1,
                   help="Adam's gradient averaging: 0.99 averages ~100 steps of noisy policy gradients "
                        f"(default: {d.beta1})")
    p.add_argument("--beta2", type=adam_beta, default=d.beta2,
                   help=f"Adam's squared-gradient averaging (default: {d.beta2})")
    p.add_argument("--temperature", type=positive_float, default=d.temperature,
                   help=f"sampling temperature (default: {d.temperature})")
    p.add_argument("--top-k", type=nonnegative_int, default=d.top_k,
                   help="sample only among the k likeliest tokens; 0 = all (default: 0)")
    p.add_argument("--baseline", choices=["loo", "mean", "none"], default=d.baseline,
                   help="leave-one-out, group-mean, or none (reinforce right traces only) "
                        "(default: %(default)s)")
    p.add_argument("--kl", type=nonnegative_float, default=d.kl_coef,
                   help="KL penalty to the starting policy (default: 0 = off)")
    p.add_argument("--entropy", type=nonnegative_float, default=d.entropy_coef,
                   help="entropy bonus (default: 0 = off)")
    p.add_argument("--kl-log-samples", type=nonnegative_int, default=d.kl_log_samples,
                   help="with --kl 0, the logged KL to the start policy is estimated on this many of each "
                        f"step's learned samples; 0 = all (default: {d.kl_log_samples})")
    p.add_argument("--kl-log-every", type=positive_int, default=d.kl_log_every,
                   help="with --kl 0, the KL to the start policy is logged every this many steps, NaN "
                        f"between (default: {d.kl_log_every})")
    p.add_argument("--curriculum", choices=["mixed", "target", "ramp"], default=d.curriculum,
                   help="operand counts per step: mixed = uniform 2..k, target = always k, ramp = easy to "
                        "hard (default: %(default)s)")
    p.add_argument("--paraphrase-prob", type=probability, default=d.paraphrase_prob,
                   help="probability that a sampled trace is paraphrased before its answer is sampled "
                        f"(default: {d.paraphrase_prob})")
    p.add_argument("--warmup-steps", type=nonnegative_int, default=d.warmup_steps,
                   help="linear learning-rate warm-up over this many steps; 0 = none "
                        f"(default: {d.warmup_steps})")
    p.add_argument("--weight-decay", type=nonnegative_float, default=d.weight_decay,
                   help=f"AdamW weight decay (default: {d.weight_decay})")
    p.add_argument("--grad-clip", type=positive_float, default=d.grad_clip,
                   help=f"gradient-norm clip (default: {d.grad_clip})")
    p.add_argument("--max-new-tokens", type=positive_int, default=d.max_new_tokens,
                   help=f"longest sampled completion (default: {d.max_new_tokens})")
    p.add_argument("--paraphraser", type=paraphraser_names, default=d.paraphraser,
                   help="comma-separated paraphrasers used in the loop, one drawn per paraphrased sample, "
                        f"from {', '.join(PARAPHRASERS)} (default: {d.paraphraser})")
    p.add_argument("--paraphrase-from-end", type=probability, default=d.paraphrase_from_end,
                   help="share of the paraphrased traces rewritten from the last step back (it matters when "
                        "a rewrite does not fit the context whole: from the front it leaves the last step as "
                        "written) "
                        f"(default: {d.paraphrase_from_end})")
    p.add_argument("--replay", type=probability, default=d.replay_fraction,
                   help="share of each step's problems drawn again from recent ones a group did not solve "
                        f"every time; 0 = all fresh (default: {d.replay_fraction})")
    p.add_argument("--replay-size", type=positive_int, default=d.replay_size,
                   help=f"how many recent unsolved problems are kept for --replay (default: {d.replay_size})")
    p.add_argument("--group-streams", action="store_true",
                   help="draw each group's samples from its own seeded stream, as every torchrun run does: "
                        "a one-process run that a data-parallel run reproduces")
    p.add_argument("--eval-problems", type=positive_int, default=d.eval_problems,
                   help=f"held-out problems for greedy accuracy (default: {d.eval_problems})")
    p.add_argument("--pass-k", type=positive_int, default=d.pass_k,
                   help=f"k of the pass@k evaluation (default: {d.pass_k})")
    p.add_argument("--pass-problems", type=positive_int, default=d.pass_problems,
                   help=f"held-out problems for pass@k (default: {d.pass_problems})")
    p.add_argument("--eval-every", type=positive_int, default=d.eval_every,
                   help=f"steps between held-out evaluations (default: {d.eval_every})")
    p.add_argument("--save-every", type=positive_int, default=50,
                   help="steps between resumable checkpoints (default: 50)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from DIR/<size>-cot.pt exactly (its saved flags are "
                        "used; flags given now are ignored, except --steps, which moves where it ends and "
                        "its lr schedule)")
    add_run_flags(p, "seed for sampling and problem order")
    return p.parse_args(argv)


def resumed_config(saved: dict, steps: int | None = None) -> RLConfig:
    """The saved run's RLConfig, run to `steps` if given (else to the saved run's own end). A field added to
    RLConfig since the save keeps its default (a run saved by an older nanocot still resumes); one removed
    since is ignored."""
    known = {f.name for f in fields(RLConfig)}
    config = RLConfig(**{k: v for k, v in saved.items() if k in known})
    return replace(config, steps=steps) if steps else config


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.samples < 2:
        raise UsageError(f"--samples must be >= 2 for a baseline, got {args.samples}")
    config = RLConfig(steps=args.steps or RLConfig().steps, prompts_per_step=args.prompts,
                      samples_per_prompt=args.samples, lr=args.lr,
                      beta1=args.beta1, beta2=args.beta2, lr_schedule=args.lr_schedule,
                      temperature=args.temperature, top_k=args.top_k, baseline=args.baseline, kl_coef=args.kl,
                      entropy_coef=args.entropy, kl_log_samples=args.kl_log_samples,
                      kl_log_every=args.kl_log_every, curriculum=args.curriculum,
                      paraphrase_prob=args.paraphrase_prob,
                      eval_every=args.eval_every, seed=args.seed, weight_decay=args.weight_decay,
                      grad_clip=args.grad_clip,
                      max_new_tokens=args.max_new_tokens, warmup_steps=args.warmup_steps,
                      paraphraser=args.paraphraser, paraphrase_from_end=args.paraphrase_from_end,
                      replay_fraction=args.replay, replay_size=args.replay_size,
                      eval_problems=args.eval_problems,
                      pass_k=args.pass_k, pass_problems=args.pass_problems,
                      group_streams=args.group_streams or distributed.launched())
    folder = Path(args.ckpt_dir)
    out_path = folder / f"{args.size}-cot.pt"
    # what this run reads must exist before anything is created (a mistyped --ckpt-dir leaves no empty folder)
    if args.resume and not out_path.exists():
        raise UsageError(f"nothing to resume: {out_path} not found")
    candidates = {"warmup": [folder / f"{args.size}-warmup.pt"],
                  "pretrain": [folder / f"{args.size}-pretrain.pt"],
                  "auto": [folder / f"{args.size}-warmup.pt", folder / f"{args.size}-pretrain.pt"]}[args.init]
    source = next((c for c in candidates if c.exists()), None)
    if not args.resume and source is None:
        raise UsageError(f"no starting checkpoint: {' or '.join(map(str, candidates))} not found; run "
                         f"`python train_sft.py --size {args.size} --stage pretrain` (and --stage warmup) "
                         "first")
    if not args.resume:  # a resumed run keeps its saved batch
        distributed.check_divides(config.prompts_per_step, "--prompts")
    device, _ = setup_run(args)
    main_process = distributed.WORLD.main  # under torchrun, the first process alone writes
    vocab = Tokenizer().vocab

    resume = None
    if args.resume:
        saved = checkpoint.load(out_path, expect={"size": args.size, "stage": "cot", "vocab": vocab})
        if "rl_state" not in saved:
            raise UsageError(f"{out_path} is a finished run (step {saved['step']}); nothing to resume")
        start = saved["start"]
        config = resumed_config(saved["rl_config"], args.steps)
        resume = {"trainer": saved["rl_state"], "record": saved["record"]}
    else:
        start = checkpoint.load(source, expect={"size": args.size, "vocab": vocab}, finished=True)
        saved = start

    task = ModularAddition(from_dict(TaskConfig, start["task_config"]))
    model = build_model(saved, device)
    # the frozen start policy: the KL penalty (if on) and the KL log
    reference = build_model(start, device).eval()
    reference.requires_grad_(False)

    def payload(record: dict, trainer_state: dict | None) -> dict:
        out = {k: v for k, v in start.items()
               if k not in ("state_dict", "record", "history", "stage", "step")}
        out.update(stage="cot", step=len(record["steps"]), start=start, rl_config=to_dict(config),
                   record=record, state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
                   seconds=record["seconds"], flops=record.get("flops", 0.0),
                   history=start["history"] + [{"stage": "cot", "steps": len(record["steps"]),
                                                "seconds": record["seconds"],
                                                "flops": record.get("flops", 0.0)}])
        if trainer_state is not None:
            out["rl_state"] = copy.deepcopy(trainer_state)
        return out

    saves = ResumableSaves(out_path, f"python train_rl.py --size {args.size} --ckpt-dir {args.ckpt_dir} "
                           "--resume")
    with saves.reporting_interrupts():
        save = lambda rec, state: saves.save(payload(rec, state), len(rec["steps"]))
        parallel = config.group_streams or distributed.WORLD.size > 1
        trainer = DataParallelReinforce(model, task, config, reference) if parallel else None
        record = train_rl(model, task, config, reference, resume=resume, save_every=args.save_every,
                          save=save if main_process else None, trainer=trainer)
    if not main_process:
        return
    final = payload(record, None)
    final.pop("start")  # a finished run does not need its starting weights
    checkpoint.save(out_path, final)
    plot_rl(record, out_path.with_suffix(".png"), f"{args.size} REINFORCE")
    first, last = record["eval"][0], record["eval"][-1]
    print(f"{out_path}: held-out greedy accuracy {first['test_accuracy']:.3f} -> "
          f"{last['test_accuracy']:.3f}, pass@1 {last['pass@1']:.3f}, {config.steps} steps in "
          f"{record['seconds']:.0f}s (sampling {record['seconds_sampling']:.0f}s, learning "
          f"{record['seconds_learning']:.0f}s)")


if __name__ == "__main__":
    run_cli(main)
