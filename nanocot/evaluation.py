"""Every measurement of the experiment on whatever checkpoints exist: the engine behind evaluate.py.

- Models are found by file name: `<size>-direct.pt` is `<size>-direct` (answers directly),
  `<size>-cot.pt` and `<size>-warmup.pt` are `<size>-cot` / `<size>-warmup` (write a trace first).
  Pretrained-only checkpoints are not task models and are skipped.
- Every model gets accuracy on the test split and each OOD split and its compute; CoT models get the
  faithfulness interventions (faithfulness.py), the monitor (monitor.py) and sampled pass@k; direct
  models get the black-box probes (probes.py). All rates carry n and a Wilson 95% interval.
- Interventions use the CoT model's own greedy traces that are right and that the monitor passes (so
  step i really adds operand i+1); if fewer than MIN_TRACES exist (an untrained model), they run on
  reference traces instead and `trace_source` says so.
- The result is one JSON-able dict (metrics.json); plots are written as it goes.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nanocot import checkpoint, interpret, plots, report
from nanocot import faithfulness as fa
from nanocot.checkpoint import build_model
from nanocot.config import TaskConfig, from_dict
from nanocot.metrics import cot_completions
from nanocot.model import GPT
from nanocot.monitor import check, summarize
from nanocot.ood import ood_splits
from nanocot.paraphrase import PARAPHRASERS
from nanocot.probes import (
    attention_maps,
    by_distance,
    cot_in_context,
    direct_answers,
    linear_probes,
    symmetry,
)
from nanocot.stats import proportion
from nanocot.task import COT, DIRECT, ModularAddition, Problem, parse_answer, prompt, reference_trace
from nanocot.tokenizer import Tokenizer
from nanocot.trace import parse_trace

STAGE_MODES = {"direct": DIRECT, "cot": COT, "warmup": COT, "ignore": COT}
MIN_TRACES = 20
# 'canonical' is the control, not a paraphrase; 'digits' (translating back) is the identity on the digit
# traces the models write, so it is not run here
EVALUATED_PARAPHRASERS = ("canonical", "swap", "reword", "words")
HEADLINE_PARAPHRASERS = ("swap", "reword", "words")


@dataclass(frozen=True)
class Sizes:
    """How many problems each measurement uses. ~1000 keeps every 95% interval within about +-3 points."""

    test: int = 1000
    ood: int = 1000
    pass_problems: int = 300
    pass_k: int = 8
    probes: int = 3000
    samples: int = 4  # sample traces per split in the report
    # training problems that fit interpret.py's probes and its per-(sum, modulus) means (~14 per cell)
    interpret_fit: int = 20000
    reducer_steps: int = 400  # training steps of each fresh reducer in interpret.reducer_capacity


QUICK = Sizes(test=150, ood=100, pass_problems=40, pass_k=4, probes=600, samples=3, interpret_fit=2000,
              reducer_steps=40)


@dataclass
class Entry:
    name: str
    mode: str
    path: Path
    payload: dict
    model: GPT


def load_models(folder: Path, device) -> tuple[TaskConfig, list[Entry]]:
    """Every task checkpoint in `folder`; all must share one tokenizer and one task."""
    found = []
    for path in sorted(folder.glob("*-*.pt")):
        size, stage = path.stem.rsplit("-", 1)
        if stage in STAGE_MODES:
            found.append((f"{size}-{stage}", STAGE_MODES[stage], path))
    if not found:
        raise ValueError("no checkpoints named <size>-direct.pt, <size>-cot.pt or <size>-warmup.pt in "
                         f"{folder}")
    vocab, task_cfg, entries = Tokenizer().vocab, None, []
    for name, mode, path in found:
        # an interrupted run is refused, not reported as trained
        payload = checkpoint.load(path, finished=True)
        if payload.get("vocab") != vocab:
            raise ValueError(f"{path} was trained with a different tokenizer vocabulary; it cannot be "
                             "evaluated here")
        try:
            cfg = from_dict(TaskConfig, payload["task_config"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path} is a checkpoint of another task (its task config does not match "
                             "nanocot's)") from None
        if task_cfg is not None and cfg != task_cfg:
            raise ValueError(f"{path} was trained on a different task than {entries[0].path}; evaluate them "
                             "separately")
        task_cfg = cfg
        entries.append(Entry(name, mode, path, payload, build_model(payload, device).eval()))
    return task_cfg, entries


def run(entries: list[Entry], task_cfg: TaskConfig, sizes: Sizes, out: Path, seed: int = 0) -> dict:
    """All measurements for all models; returns metrics.json's dict and writes the plots into `out`."""
    task, tok = ModularAddition(task_cfg), Tokenizer(task_cfg.number_format)
    splits = {"test": task.test_set(sizes.test), **ood_splits(task, sizes.ood)}
    metrics: dict = {"task": {"operands": task_cfg.num_operands,
                              "moduli": [task_cfg.min_modulus, task_cfg.max_modulus],
                              "heldout_moduli": list(task_cfg.heldout_moduli),
                              "splits": {k: len(v) for k, v in splits.items()}},
                     "sizes": sizes.__dict__, "models": {}, "faithfulness": {}, "monitor": {},
                     "black_box": {}, "compute": {}, "samples": {}}
    for e in entries:
        torch.manual_seed(seed)
        steps = ["accuracy"] + (["sampling", "faithfulness", "probes"] if e.mode == COT
                                else ["probes", "inside"])
        bar = tqdm(steps, desc=e.name, dynamic_ncols=True)
        texts: dict[str, list[str]] = {}
        for step in bar:
            bar.set_postfix_str(step)
            if step == "accuracy":
                metrics["models"][e.name], texts = _accuracy(e, tok, splits)
                if e.mode == COT:
                    metrics["monitor"][e.name] = _monitor(splits, texts)
                    metrics["samples"][e.name] = _samples(splits, texts, sizes.samples)
            elif step == "sampling":
                metrics["models"][e.name]["sampled"] = _sampled(
                    e.model, tok, splits["test"][: sizes.pass_problems], sizes.pass_k, seed)
            elif step == "faithfulness":
                metrics["faithfulness"][e.name] = _faithfulness(
                    e, tok, splits["test"], texts["test"], seed, out)
                metrics["faithfulness"][e.name]["iid_agreement"] = (
                    metrics["models"][e.name]["sampled"]["agreement"])
            else:
                metrics["black_box"][e.name] = _black_box(e, tok, task, splits, sizes, out, seed)
        metrics["compute"][e.name] = _compute(e, tok, splits["test"], texts.get("test"))
    metrics["training"] = _training(entries, metrics["compute"], out)
    plots.plot_accuracy(metrics, out / "accuracy.png")
    plots.plot_compute(metrics, out / "compute.png")
    if metrics["faithfulness"]:
        plots.plot_mistakes(metrics["faithfulness"], out / "mistakes.png")
        plots.plot_early_answering(metrics["faithfulness"], out / "early_answering.png")
        plots.plot_paraphrase(metrics["faithfulness"], out / "paraphrase.png")
    names, roles, rows = report.controls_table(metrics)
    if names:
        plots.plot_controls(names, roles, rows, out / "controls.png")
    if any("probes" in b for b in metrics["black_box"].values()):
        plots.plot_probes(metrics["black_box"], out / "probes.png")
    return metrics


def _training(entries: list[Entry], compute: dict, out: Path) -> dict:
    """How each evaluated model was made: its stages (the compute section's per-stage list, from the
    checkpoint's history) and the training curves drawn from the records the checkpoints carry: pretraining
    loss of every size (read from <size>-pretrain.pt beside them), direct SFT of every size, the REINFORCE
    run."""
    folder = entries[0].path.parent
    pretrain = {}
    for path in sorted(folder.glob("*-pretrain.pt")):
        try:
            pretrain[path.stem.rsplit("-", 1)[0]] = checkpoint.load(path, finished=True)["record"]
        except (checkpoint.CheckpointError, KeyError):
            continue  # an unfinished or foreign pretraining checkpoint has no curve to show
    direct = {e.name: e.payload["record"] for e in entries
              if e.name.endswith("-direct") and e.payload.get("record", {}).get("eval")}
    rl = [e for e in entries if e.name.endswith("-cot") and "steps" in e.payload.get("record", {})]
    drawn = []
    if pretrain:
        plots.plot_pretraining(pretrain, out / "pretraining.png")
        drawn.append("pretraining.png")
    if direct:
        plots.plot_direct_comparison(direct, out / "direct_sft.png")
        drawn.append("direct_sft.png")
    for e in rl:
        plots.plot_rl(e.payload["record"], out / f"rl-{e.name}.png", f"{e.name}: REINFORCE")
        drawn.append(f"rl-{e.name}.png")
    return {"history": {name: c["stages"] for name, c in compute.items()}, "plots": drawn}


def _accuracy(e: Entry, tok: Tokenizer, splits: dict[str, list[Problem]]) -> tuple[dict, dict]:
    """Greedy accuracy on every split (with intervals); CoT models also return their completions."""
    rates, texts = {}, {}
    for split, problems in splits.items():
        if e.mode == DIRECT:
            answers = direct_answers(e.model, tok, problems)
            texts[split] = [f"{a}\n" if a is not None else "\n" for a in answers]
        else:
            texts[split] = cot_completions(e.model, tok, problems, max_new_tokens=e.model.config.block_size)
            answers = [parse_answer(t, COT) for t in texts[split]]
        rates[split] = proportion(a == p.answer for a, p in zip(answers, problems))
    return {"params": int(e.payload.get("params", e.model.num_params())), "mode": e.mode,
            "accuracy": {k: r["value"] for k, r in rates.items()}, "intervals": rates}, texts


def _sampled(model: GPT, tok: Tokenizer, problems: list[Problem], k: int, seed: int) -> dict:
    """Sampled (temperature 1) pass@1 and pass@k, and how often two samples agree on the answer (the
    IID-resample baseline for the paraphrase same-answer rate)."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    repeated = [p for p in problems for _ in range(k)]
    texts = cot_completions(model, tok, repeated, greedy=False, temperature=1.0, generator=gen,
                            max_new_tokens=model.config.block_size)
    answers = np.array([parse_answer(t, COT) for t in texts], dtype=object).reshape(len(problems), k)
    hits = np.array([[a == p.answer for a in row] for row, p in zip(answers, problems)])
    per_problem = np.repeat(np.arange(len(problems)), k)  # k samples of one problem are not independent
    return {"k": k, "pass@1": proportion(hits.flatten(), clusters=per_problem),
            f"pass@{k}": proportion(hits.any(1)),
            "agreement": proportion(row[0] is not None and row[0] == row[1] for row in answers)
            if k >= 2 else proportion([])}


def _monitor(splits: dict[str, list[Problem]], texts: dict[str, list[str]]) -> dict:
    per_split = {s: summarize(problems, [check(p, t) for p, t in zip(problems, texts[s])])
                 for s, problems in splits.items()}
    test = per_split["test"]
    return {"step_validity": test["step_validity"]["value"], "consistency": test["consistency"]["value"],
            "right_for_wrong_reasons": test["right_for_wrong_reasons"]["value"], "splits": per_split}


def _samples(splits: dict[str, list[Problem]], texts: dict[str, list[str]], n: int) -> dict:
    """A few traces per split for the report: wrong ones first (they show how the model adapts)."""
    out = {}
    for split, problems in splits.items():
        rows = []
        for p, t in zip(problems, texts[split]):
            c = check(p, t)
            rows.append({"prompt": prompt(p, COT).strip(), "completion": t.strip(), "answer": p.answer,
                         "correct": c.answer == p.answer,
                         "first_invalid": None if c.valid else c.first_invalid + 1,
                         "reference": reference_trace(p)})
        out[split] = ([r for r in rows if not r["correct"]][: (n + 1) // 2]
                      + [r for r in rows if r["correct"]])[:n]
    return out


def _faithfulness(e: Entry, tok: Tokenizer, problems: list[Problem], texts: list[str], seed: int,
                  out: Path) -> dict:
    policy = fa.ModelPolicy(e.model, tok, COT)
    usable = [(p, parse_trace(t)) for p, t in zip(problems, texts)
              if check(p, t).valid and parse_answer(t, COT) == p.answer]
    parsed = [(p, tr) for p, t in zip(problems, texts) if (tr := parse_trace(t)) is not None]
    source = "model"
    if len(usable) < MIN_TRACES:
        usable = parsed = [(p, parse_trace(reference_trace(p))) for p in problems]
        source = "reference"
    up, ut = [p for p, _ in usable], [t for _, t in usable]
    bodies = [t.split("\n", 1)[0].split(";", 1)[0] for t in texts]
    mistakes = fa.summarize_mistakes(fa.adding_mistakes(policy, up, ut, seed))
    early = fa.early_answering(policy, [p for p, _ in parsed], [t for _, t in parsed])
    # the same cuts read by a perfectly faithful executor (it answers with the value its cut trace last
    # wrote), on the reference traces of the same problems: a yardstick, not a ceiling (a model whose early
    # guesses match the final answer less often than the running value does scores higher)
    executor = fa.early_answering(fa.ExecutorPolicy(), [p for p, _ in parsed],
                                  [parse_trace(reference_trace(p)) for p, _ in parsed])
    para = {name: fa.paraphrase(policy, up, ut, PARAPHRASERS[name], seed, fits=policy.fits)
            for name in EVALUATED_PARAPHRASERS}
    for name in HEADLINE_PARAPHRASERS:  # the last j steps rewritten, the earlier ones as written
        para[name]["by_last_steps"] = fa.paraphrase_last_steps(policy, up, ut, PARAPHRASERS[name], seed,
                                                               fits=policy.fits)
    direct = direct_answers(e.model, tok, problems)
    result = {
        "trace_source": source, "n_traces": len(usable),
        "no_trace": fa.no_trace(policy, problems),
        # can it answer in one forward pass when asked to (the direct prompt)? A CoT model that can, and still
        # follows its trace, is not backfilling (controls.py, large-cot)
        "direct_prompt": proportion(a == p.answer for a, p in zip(direct, problems)),
        "mistakes": mistakes,
        "early": {**early, "aoc_executor": executor["aoc"],
                  "aoc_executor_excl_final": executor["aoc_excl_final"],
                  "executor_curves": executor["curves"], "executor_counts": executor["counts"]},
        "filler": {"dots": fa.filler(policy, problems, bodies, ".", seed),
                   "digits": fa.filler(policy, problems, bodies, "digits", seed)},
        "paraphrase": para,
        "transplant": fa.transplant(policy, up, ut),
    }
    headline = mistakes["off_by_one/continue"]
    result.update(
        no_trace_accuracy=result["no_trace"]["value"],
        direct_prompt_accuracy=result["direct_prompt"]["value"],
        corrupt_accuracy=headline["accuracy"]["value"],
        corrupt_follow_rate=headline["follow_rate"]["value"],
        early_answer_aoc=early["aoc"],
        filler_accuracy=result["filler"]["dots"]["value"],
        paraphrase_accuracy=headline_paraphrase_accuracy(para),
        transplant_follow_rate=result["transplant"]["follow_rate"]["value"],
    )
    maps, labels = attention_maps(e.model, tok, prompt(problems[0], COT) + texts[0].rstrip("\n"))
    plots.plot_attention(maps, labels, out / f"attention-{e.name}.png", e.name)
    return result


def headline_paraphrase_accuracy(para: dict) -> float:
    """The paraphrase test rewrites the trace: the mean over the headline paraphrasers of the accuracy on
    traces whose last step was rewritten (a rewrite that leaves the step whose value the answer repeats as the
    model wrote it lets the answer be copied). A paraphraser that rewrote no last step (none fitted the
    context) is left out; if every one is, the accuracy over all traces stands in."""
    last = [para[n]["last_step"]["accuracy"]["value"] for n in HEADLINE_PARAPHRASERS
            if para[n]["last_step"]["accuracy"]["n"]]
    return (float(np.mean(last)) if last
            else float(np.mean([para[n]["accuracy"]["value"] for n in HEADLINE_PARAPHRASERS])))


def _black_box(e: Entry, tok: Tokenizer, task: ModularAddition, splits: dict, sizes: Sizes, out: Path,
               seed: int) -> dict:
    """Probes for every model (at its own prompt's last token); behaviour tests and the causal analysis of
    interpret.py ("inside") for direct models."""
    result = {"probes": linear_probes(e.model, tok, task.test_set(sizes.probes), e.mode)}
    if e.mode == DIRECT:
        problems = splits["test"] + splits["larger"] + splits["negative"]
        answers = direct_answers(e.model, tok, problems)
        result["by_distance"] = by_distance(problems, [a == p.answer for a, p in zip(answers, problems)])
        result.update(symmetry(e.model, tok, splits["test"]))
        result["cot_in_context"] = cot_in_context(e.model, tok, splits["test"])
        maps, labels = attention_maps(e.model, tok, prompt(splits["test"][0], DIRECT))
        plots.plot_attention(maps, labels, out / f"attention-{e.name}.png", e.name)
        ood = {k: splits[k] for k in ("negative", "larger")}
        result["inside"] = interpret.analyse(e.model, tok, task, splits["test"], ood, sizes.interpret_fit,
                                             sizes.reducer_steps, seed)
        plots.plot_inside(result["inside"], out / f"inside-{e.name}.png", e.name)
    return result


def _compute(e: Entry, tok: Tokenizer, problems: list[Problem], texts: list[str] | None) -> dict:
    """Training cost per stage (from the checkpoint's history) and inference cost per answer."""
    history = e.payload.get("history") or [{"stage": e.payload.get("stage"),
                                            "flops": e.payload.get("flops", 0.0),
                                            "seconds": e.payload.get("seconds", 0.0)}]
    prompt_tokens = float(np.mean([len(tok.encode(prompt(p, e.mode))) for p in problems]))
    generated = float(np.mean([len(tok.encode(t)) if t.strip() else 2 for t in texts])) if texts else 2.0
    total = prompt_tokens + generated
    # forward only: a third of training's forward + backward
    forward = e.model.flops_per_token(int(total)) / 3
    return {"params": int(e.payload.get("params", e.model.num_params())),
            "train_flops": float(sum(h.get("flops", 0.0) for h in history)),
            "train_seconds": float(sum(h.get("seconds", 0.0) for h in history)),
            "stages": [{"stage": h.get("stage"), "steps": h.get("steps"), "flops": float(h.get("flops", 0.0)),
                        "seconds": float(h.get("seconds", 0.0))} for h in history],
            "inference_tokens_per_answer": generated, "inference_prompt_tokens": prompt_tokens,
            "inference_flops_per_answer": float(forward * total)}
