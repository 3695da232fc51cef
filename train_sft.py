"""Supervised stages: pretrain on the toy corpus, direct-answer SFT, or the short CoT warm-up.

    python train_sft.py --size small --stage pretrain
    python train_sft.py --size small --stage direct      # starts from out/small-pretrain.pt
    python train_sft.py --size small --stage warmup      # CoT warm-up on a few reference traces
    python train_sft.py --size large --stage warmup --start direct   # large-cot's warm-up (a control)
    python train_sft.py --size large --stage ignore      # the negative control (nanocot/controls.py)
    python train_sft.py --size small --stage direct --resume   # continue an interrupted run exactly

Writes DIR/<size>-<stage>.pt (atomically; also every --save-every steps and on Ctrl-C, as a resumable
checkpoint that later stages refuse until it is finished) and DIR/<size>-<stage>.png (its curves).
"""

import argparse
from dataclasses import replace
from pathlib import Path

from nanocot import checkpoint, distributed
from nanocot.checkpoint import describe_mismatch
from nanocot.cli import (
    Parser,
    ResumableSaves,
    UsageError,
    add_run_flags,
    first_paragraph,
    paraphraser_names,
    positive_float,
    positive_int,
    probability,
    run_cli,
    setup_run,
)
from nanocot.config import (
    SIZES,
    STAGE_DEFAULTS,
    STAGE_STARTS,
    STAGES,
    CorpusConfig,
    TaskConfig,
    TrainConfig,
    from_dict,
    model_config,
    to_dict,
)
from nanocot.paraphrase import PARAPHRASERS
from nanocot.sft import finetune, pretrain
from nanocot.task import validate
from nanocot.tokenizer import NUMBER_FORMATS, Tokenizer


def parse_args(argv=None):
    task, corpus = TaskConfig(), CorpusConfig()
    p = Parser(description=first_paragraph(__doc__), prog="train_sft.py")
    p.add_argument("--size", choices=SIZES, default="small", help="model preset (default: small)")
    p.add_argument("--stage", choices=STAGES, default="pretrain",
                   help="which supervised stage to run (default: pretrain)")
    p.add_argument("--start", choices=["pretrain", "direct"],
                   help="the checkpoint a later stage starts from, DIR/<size>-<start>.pt (default: "
                        + ", ".join(f"{stage}: {start}" for stage, start in STAGE_STARTS.items()) + ")")
    p.add_argument("--steps", type=positive_int,
                   help="optimizer steps (default: the stage's, see nanocot/config.py)")
    p.add_argument("--batch-size", type=positive_int, help="sequences per step (default: the stage's)")
    p.add_argument("--lr", type=positive_float, help="peak learning rate (default: the stage's)")
    p.add_argument("--min-lr-ratio", type=probability,
                   help="the cosine decays the learning rate to lr * this at the last step (default: the "
                        "stage's)")
    p.add_argument("--eval-every", type=positive_int,
                   help="steps between held-out evaluations (default: the stage's)")
    p.add_argument("--stop-accuracy", type=probability,
                   help="direct/warmup: stop at the first evaluation whose accuracy on 300 training-split "
                        "problems reaches this, e.g. a warm-up that leaves REINFORCE a gap; 0 = run every "
                        "step (default: the stage's)")
    p.add_argument("--stop-nearest", action="store_true",
                   help="with --stop-accuracy: end at the evaluation before the first one reaching it when "
                        "that one was nearer the threshold (a warm-up can jump 25 points between two "
                        "evaluations)")
    p.add_argument("--stop-bisect", action=argparse.BooleanOptionalAction, default=None,
                   help="with --stop-accuracy: once an evaluation reaches it, search the steps since the "
                        "evaluation before for one where accuracy crosses it, and end there (default: on for "
                        "warmup, off with --stop-nearest)")
    p.add_argument("--save-every", type=positive_int, default=250,
                   help="steps between resumable checkpoints, so a crash loses at most this many steps "
                        "(default: 250)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from DIR/<size>-<stage>.pt exactly (its saved flags are "
                        "used; training, task and corpus flags given now are ignored)")
    add_run_flags(p, "seed for initialisation and data order")
    p.add_argument("--num-examples", type=int, default=0,
                   help="warmup/direct only: train on a fixed pool of this many problems; 0 = fresh problems "
                        "every step (default: 0)")
    p.add_argument("--easier-fraction", type=probability,
                   help="share of training problems with fewer operands. pretrain: sets the task's, which "
                        f"later stages inherit (default: {task.easier_fraction}); warmup/direct: this "
                        "stage's own mix (default: the task's)")
    p.add_argument("--paraphrase-fraction", type=probability,
                   help="warmup only: share of examples that teach reading a paraphrased reference trace "
                        "(loss on the answer only; the model is never taught to write paraphrases) "
                        f"(default: {STAGE_DEFAULTS['warmup'].paraphrase_fraction})")
    p.add_argument("--read-paraphrasers", type=paraphraser_names,
                   help="warmup only: comma-separated paraphrasers for those examples, from "
                        f"{', '.join(PARAPHRASERS)} (default: {STAGE_DEFAULTS['warmup'].read_paraphrasers})")
    p.add_argument("--direct-fraction", type=probability,
                   help="warmup only: share of examples that rehearse the direct answer, so a model that "
                        "could answer without a trace keeps that ability (large-cot) (default: "
                        f"{STAGE_DEFAULTS['warmup'].direct_fraction})")
    p.add_argument("--read-from-end", type=probability,
                   help="warmup only: share of those examples paraphrased from the last step back (it "
                        "matters when a rewrite does not fit the context whole: from the front it leaves the "
                        "last step as written) "
                        f"(default: {STAGE_DEFAULTS['warmup'].read_from_end})")
    p.add_argument("--balanced-steps", type=probability,
                   help="warmup only: share of the trace examples that are single steps whose operand pair "
                        "is uniform over the task's pairs and whose total is reduced half the time "
                        f"(default: {STAGE_DEFAULTS['warmup'].balanced_steps})")
    g = p.add_argument_group("task (pretrain only; later stages inherit the pretrained checkpoint's task)")
    g.add_argument("--operands", type=int, default=task.num_operands,
                   help=f"operands per test problem, k (default: {task.num_operands})")
    g.add_argument("--min-operands", type=int, default=task.min_operands,
                   help=f"fewest operands mixed into training (default: {task.min_operands})")
    g.add_argument("--min-modulus", type=int, default=task.min_modulus,
                   help=f"smallest modulus (default: {task.min_modulus})")
    g.add_argument("--max-modulus", type=int, default=task.max_modulus,
                   help=f"largest modulus (default: {task.max_modulus})")
    g.add_argument("--max-operand", type=int, default=task.max_operand,
                   help="operands lie in [0, this); 0 = in [0, m), below the modulus (default: "
                        f"{task.max_operand})")
    g.add_argument("--modulus-first", action=argparse.BooleanOptionalAction, default=task.modulus_first,
                   help="write the modulus before the operands ('%%21 8+7+12+5=' instead of '8+7+12+5%%21='; "
                        f"default: {task.modulus_first})")
    g.add_argument("--number-format", choices=NUMBER_FORMATS, default=task.number_format,
                   help=f"numbers as single tokens or as digit characters (default: {task.number_format})")
    g = p.add_argument_group("corpus (pretrain only)")
    g.add_argument("--corpus-lines", type=positive_int, default=corpus.num_lines,
                   help=f"lines of toy text (default: {corpus.num_lines})")
    g.add_argument("--worked-fraction", type=probability, default=corpus.worked_fraction,
                   help="share of corpus lines that are worked k-operand traces "
                        f"(default: {corpus.worked_fraction})")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.corpus_lines < 100:
        raise UsageError("--corpus-lines must be >= 100 (enough text for pretraining windows), got "
                         f"{args.corpus_lines}")
    if args.num_examples < 0:
        raise UsageError(f"--num-examples must be >= 0, got {args.num_examples}")
    # flags some stages read: refused at another rather than silently ignored
    no_accuracy = "pretraining has no held-out accuracy"  # the reason, given only at pretrain
    for flag, given, where, why in (
            ("--stop-accuracy", args.stop_accuracy, ("direct", "warmup"), no_accuracy),
            ("--stop-nearest", args.stop_nearest, ("direct", "warmup"), no_accuracy),
            ("--stop-bisect", args.stop_bisect is not None, ("direct", "warmup"), no_accuracy),
            ("--paraphrase-fraction", bool(args.paraphrase_fraction), ("warmup",), ""),
            ("--read-paraphrasers", args.read_paraphrasers is not None, ("warmup",), ""),
            ("--read-from-end", args.read_from_end is not None, ("warmup",), ""),
            ("--direct-fraction", bool(args.direct_fraction), ("warmup",), ""),
            ("--balanced-steps", bool(args.balanced_steps), ("warmup",), ""),
            ("--num-examples", args.num_examples > 0, ("warmup", "direct"), ""),
            ("--start", args.start is not None, ("warmup", "ignore"), "")):
        if given and args.stage not in where:
            raise UsageError(f"{flag} applies to the {' and '.join(where)} stage{'s' * (len(where) > 1)} "
                             f"only, not {args.stage}"
                             + (f" ({why})" if why and args.stage == "pretrain" else ""))
    if args.stop_nearest and args.stop_bisect:
        raise UsageError("--stop-nearest and --stop-bisect are two ways to stop near the threshold; give one")
    # --stop-nearest is the other way to stop near the threshold: it turns the stage's bisection off
    bisect = (not args.stop_nearest and STAGE_DEFAULTS[args.stage].stop_bisect) if args.stop_bisect is None \
        else args.stop_bisect
    # --easier-fraction sets the task's mix at pretraining (later stages inherit it) and a warmup/direct
    # stage's own otherwise
    given = args.easier_fraction is not None
    task_mix = args.easier_fraction if given and args.stage == "pretrain" else TaskConfig().easier_fraction
    defaults = STAGE_DEFAULTS[args.stage]
    stage_mix = args.easier_fraction if given and args.stage != "pretrain" else defaults.easier_fraction
    task_cfg = replace(TaskConfig(), num_operands=args.operands, min_operands=args.min_operands,
                       min_modulus=args.min_modulus, max_modulus=args.max_modulus,
                       max_operand=args.max_operand, modulus_first=args.modulus_first,
                       easier_fraction=task_mix, number_format=args.number_format)
    try:
        validate(task_cfg)
    except ValueError as e:
        raise UsageError(str(e)) from None
    corpus_cfg = replace(CorpusConfig(), num_lines=args.corpus_lines, worked_fraction=args.worked_fraction)
    train_cfg = replace(defaults, seed=args.seed, steps=args.steps or defaults.steps,
                        batch_size=args.batch_size or defaults.batch_size, lr=args.lr or defaults.lr,
                        min_lr_ratio=defaults.min_lr_ratio if args.min_lr_ratio is None
                        else args.min_lr_ratio,
                        eval_every=args.eval_every or defaults.eval_every, easier_fraction=stage_mix,
                        read_paraphrasers=args.read_paraphrasers or defaults.read_paraphrasers,
                        stop_accuracy=defaults.stop_accuracy if args.stop_accuracy is None
                        else args.stop_accuracy,
                        stop_nearest=args.stop_nearest or defaults.stop_nearest,
                        stop_bisect=bisect,
                        paraphrase_fraction=defaults.paraphrase_fraction if args.paraphrase_fraction is None
                        else args.paraphrase_fraction,
                        read_from_end=defaults.read_from_end if args.read_from_end is None
                        else args.read_from_end,
                        direct_fraction=defaults.direct_fraction if args.direct_fraction is None
                        else args.direct_fraction,
                        balanced_steps=defaults.balanced_steps if args.balanced_steps is None
                        else args.balanced_steps)
    folder = Path(args.ckpt_dir)
    start = args.start or STAGE_STARTS.get(args.stage, "")
    out_path, source = folder / f"{args.size}-{args.stage}.pt", folder / f"{args.size}-{start}.pt"
    # what this run reads must exist before anything is created (a mistyped --ckpt-dir leaves no empty folder)
    if args.resume and not out_path.exists():
        raise UsageError(f"nothing to resume: {out_path} not found")
    if not args.resume and args.stage != "pretrain" and not source.exists():
        raise UsageError(f"{source} not found: run `python train_sft.py --size {args.size} --stage {start} "
                         f"--ckpt-dir {args.ckpt_dir}` first")
    if not args.resume:  # a resumed run keeps its saved batch (uneven shares are still computed right)
        distributed.check_divides(train_cfg.batch_size, "--batch-size")
    device, _ = setup_run(args)
    main_process = distributed.WORLD.main  # under torchrun, the first process alone writes
    tok = Tokenizer()
    # the same preset and vocabulary as now: a checkpoint made before a preset changed is refused, naming
    # the field
    same_model = {"size": args.size, "vocab": tok.vocab,
                  "model_config": to_dict(model_config(args.size, len(tok)))}
    saves = ResumableSaves(out_path, f"python train_sft.py --size {args.size} --stage {args.stage} "
                                     f"--ckpt-dir {args.ckpt_dir} --resume")
    run = dict(save=(lambda partial: saves.save(partial, partial["step"])) if main_process else None,
               save_every=args.save_every)
    with saves.reporting_interrupts():
        if args.resume:
            saved = checkpoint.load(out_path, expect={**same_model, "stage": args.stage})
            if "train_state" not in saved:
                raise UsageError(f"{out_path} is a finished run ({saved['step']} steps); nothing to resume")
            train_cfg = from_dict(TrainConfig, saved["train_config"])
            if args.stage == "pretrain":
                payload = pretrain(args.size, train_cfg, from_dict(TaskConfig, saved["task_config"]),
                                   from_dict(CorpusConfig, saved["corpus_config"]), device, resume=saved,
                                   **run)
            else:
                payload = finetune(saved, args.stage, train_cfg, device, num_examples=saved["num_examples"],
                                   resume=saved, **run)
        elif args.stage == "pretrain":
            payload = pretrain(args.size, train_cfg, task_cfg, corpus_cfg, device, **run)
        else:
            pretrained = checkpoint.load(source, expect={**same_model, "stage": start}, finished=True)
            pretrained_task = from_dict(TaskConfig, pretrained["task_config"])
            if pretrained_task != task_cfg and task_cfg != TaskConfig():
                raise UsageError(
                    f"{source} was pretrained for another task ("
                    f"{describe_mismatch('task', to_dict(pretrained_task), to_dict(task_cfg))}); "
                    "task flags apply to --stage pretrain only")
            payload = finetune(pretrained, args.stage, train_cfg, device, num_examples=args.num_examples,
                               **run)
    if not main_process:
        return
    checkpoint.save(out_path, payload)
    from nanocot.plots import (  # here: matplotlib adds ~1 s to every start-up
        plot_direct_comparison,
        plot_stage,
    )

    plot_stage(payload["record"], out_path.with_suffix(".png"), f"{args.size} {args.stage}")
    if args.stage == "direct":  # both sizes side by side, once both exist
        records = {}
        for size in SIZES:
            path = folder / f"{size}-direct.pt"
            if path.exists():
                records[size] = payload["record"] if size == args.size else checkpoint.load(path)["record"]
        plot_direct_comparison(records, folder / "direct-sft.png")
    last = payload["record"]["eval"][-1] if payload["record"]["eval"] else {}
    summary = ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k != "step")
    print(f"{out_path}: {payload['params']:,} params, {payload['step']} steps in {payload['seconds']:.0f}s"
          + (f", {summary}" if summary else f", final loss {payload['record']['loss'][-1]:.3f}"))


if __name__ == "__main__":
    run_cli(main)
