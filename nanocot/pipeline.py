"""The whole experiment as a list of stages, each one run of a user-facing script.

`python -m nanocot` walks this list: pretrain both sizes, direct-answer SFT both, CoT warm-up and
REINFORCE for the small model, then evaluate. Every stage is the same command a reader could type
(printed before it runs), so the pipeline adds no hidden behaviour; it only skips stages whose finished
checkpoint exists, resumes ones that were interrupted, and times each. With several seeds it repeats the
list per seed and summarises every headline number as mean, spread and a 95% interval.

Each stage names the one stage whose checkpoint it starts from (`after`), so stages run side by side as
soon as that one is done, up to `jobs` at a time, each with its share of the CPU threads and its output in a
log file. On a CPU (`jobs=2`) that is the large and the small model's chains: models this small use a second
thread poorly (per-op overhead, not arithmetic, dominates), so two one-thread runs finish sooner than the
same runs one after the other with two threads each. On a GPU (`jobs=3`) the small model's direct SFT also
runs beside its warm-up and REINFORCE: each process leaves the GPU mostly idle between its launches.
"""

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from nanocot import checkpoint
from nanocot.config import STAGE_DEFAULTS, STAGE_STARTS, RLConfig
from nanocot.controls import LARGE_COT_DIRECT_FRACTION, LARGE_COT_LR
from nanocot.stats import t95
from nanocot.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent

# Tiny budgets for a smoke test of the plumbing (`--quick`): the numbers it produces mean nothing.
QUICK_FLAGS = {
    "pretrain": ["--steps", "30"],
    "direct": ["--steps", "30", "--eval-every", "15"],
    "warmup": ["--steps", "30", "--eval-every", "15"],
    "ignore": ["--steps", "30", "--eval-every", "15"],
    "rl": ["--steps", "4", "--prompts", "4", "--samples", "2", "--eval-every", "2", "--eval-problems", "20",
           "--pass-problems", "10", "--pass-k", "2"],
}


@dataclass(frozen=True)
class Stage:
    name: str  # e.g. "large-direct"
    script: str  # train_sft.py, train_rl.py or evaluate.py
    args: tuple[str, ...]
    output: str  # checkpoint file name inside the checkpoint folder ("" for evaluation)
    resume_flag: str = ""  # flag that continues an interrupted run, if the script has one
    after: str = ""  # the stage whose checkpoint this one starts from ("" = none)
    steps: int = 0  # the step budget its script runs with these args (0 = not checked)
    # settings its checkpoint's configs must have to be reused, e.g. large-cot's rehearsal and learning rate
    settings: tuple[tuple[str, float], ...] = ()


# the instrument controls `python -m nanocot --controls` adds (nanocot/controls.py): name -> what it is
CONTROLS = {
    "large-cot": "the large direct model given small-cot's warm-up and REINFORCE: a model that can answer "
                 "without a trace and also writes one (the backfilling counterfactual)",
    "large-ignore": "the large direct model taught traces with random values before its true answer: a trace "
                    "its answer ignores (the negative control)",
}


def control_models(controls: tuple[str, ...], large: str) -> tuple[str, ...]:
    """The model names the controls' checkpoints get: a control is named for the default large preset
    ('large-cot'), its model for the preset it is made from ('small-cot' under --large small)."""
    return tuple(f"{large}-{name.split('-', 1)[1]}" for name in controls)


def control_list(text: str) -> list[str]:
    """'all' or comma-separated names from CONTROLS, in CONTROLS' order; a ValueError names an unknown one."""
    names = list(CONTROLS) if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTROLS]
    if unknown or not names:
        raise ValueError(f"unknown control {', '.join(unknown) or repr(text)}: choose from "
                         f"{', '.join(CONTROLS)} or all")
    return [n for n in CONTROLS if n in names]


def stages(small: str, large: str, quick: bool, controls: tuple[str, ...] = ()) -> list[Stage]:
    """The experiment in order, then the named controls. Larger model first within each step so the slowest
    stage starts early."""

    def q(kind: str) -> tuple[str, ...]:
        return tuple(QUICK_FLAGS[kind]) if quick else ()

    def steps(kind: str, default: int) -> int:
        flags = q(kind)
        return int(flags[flags.index("--steps") + 1]) if "--steps" in flags else default

    def flags(settings: tuple[tuple[str, float], ...]) -> tuple[str, ...]:
        """The command-line flags that give a stage its settings: ('lr', 1e-4) -> ('--lr', '0.0001')."""
        return tuple(part for key, value in settings for part in (f"--{key.replace('_', '-')}", str(value)))

    def sft(size: str, stage: str, start: str = "", settings: tuple[tuple[str, float], ...] = ()) -> Stage:
        usual = STAGE_STARTS.get(stage, "")  # pretrain starts from nothing
        start = start or usual
        args = ("--size", size, "--stage", stage) + (("--start", start) if start != usual else ()) \
            + flags(settings) + q(stage)
        return Stage(f"{size}-{stage}", "train_sft.py", args, f"{size}-{stage}.pt", "--resume",
                     f"{size}-{start}" if start else "",
                     steps(stage, STAGE_DEFAULTS[stage].steps), settings)

    def rl(size: str, settings: tuple[tuple[str, float], ...] = (),
           carried: tuple[tuple[str, float], ...] = ()) -> Stage:
        """`carried`: the warm-up's settings, checked on the train_config a REINFORCE checkpoint carries."""
        return Stage(f"{size}-cot", "train_rl.py", ("--size", size) + flags(settings) + q("rl"),
                     f"{size}-cot.pt", "--resume", f"{size}-warmup", steps("rl", RLConfig().steps),
                     settings + carried)

    # a warm-up made before its balanced steps were the default is refused, not silently reused
    balanced = (("balanced_steps", STAGE_DEFAULTS["warmup"].balanced_steps),)
    todo = [
        sft(large, "pretrain"), sft(small, "pretrain"),
        sft(large, "direct"), sft(small, "direct"),
        sft(small, "warmup", settings=balanced), rl(small, carried=balanced),
    ]
    if controls and small == large:
        raise ValueError("the controls need two different presets for --small and --large (the large "
                         "model's warm-up and REINFORCE would overwrite the small model's)")
    if "large-cot" in controls:
        rehearsed = (("direct_fraction", LARGE_COT_DIRECT_FRACTION),) + balanced
        todo += [sft(large, "warmup", start="direct", settings=rehearsed),
                 rl(large, settings=(("lr", LARGE_COT_LR),), carried=rehearsed)]
    if "large-ignore" in controls:
        todo.append(sft(large, "ignore"))
    # one preset for both sizes (e.g. --quick's tiny/tiny): each checkpoint is made once, never by two writers
    return [stage for i, stage in enumerate(todo) if stage.output not in {s.output for s in todo[:i]}]


def _readable(path: Path) -> dict | None:
    """The checkpoint at `path`, or None if there is none or it cannot be read (the stage then writes it
    again)."""
    if not path.exists():
        return None
    try:
        return checkpoint.load(path)
    except checkpoint.CheckpointError:
        return None


def checkpoint_state(path: Path) -> str:
    """'missing', 'partial' (an interrupted run that can be resumed) or 'done'."""
    payload = _readable(path)
    if payload is None:
        return "missing"
    return "partial" if ("train_state" in payload or "rl_state" in payload) else "done"


def made_with(payload: dict) -> dict:
    """The settings of the run that wrote a checkpoint: its RL config's over its supervised one's (a REINFORCE
    checkpoint also carries the warm-up's train_config, so both can be read)."""
    return {**(payload.get("train_config") or {}), **(payload.get("rl_config") or {})}


def check_reusable(stage_list: list[Stage], ckpt_dir: Path, seed: int) -> None:
    """Refuse, before anything runs, a checkpoint this run would skip or resume but another run wrote: one
    from `--quick` (its 30 steps would be reported as the experiment), from another seed, or with another step
    budget. The pipeline checks the seed and the budget, the two things its own runs differ in, a stage's own
    `settings` (large-cot's rehearsal and rate), and the vocabulary, which a checkpoint of an older version
    of nanocot may not share."""
    vocab = Tokenizer().vocab
    for stage in stage_list:
        path = ckpt_dir / stage.output
        payload = _readable(path)  # read once: finished or resumable, both would be reused
        if payload is None:
            continue
        if payload.get("vocab") != vocab:
            size = len(payload.get("vocab") or [])
            raise ValueError(f"{path} was made with another tokenizer vocabulary ({size} tokens; this "
                             f"version has {len(vocab)}): use another --ckpt-dir, or --force to redo every "
                             "stage")
        made = made_with(payload)
        got = made.get("seed"), made.get("steps")
        want = (seed, stage.steps or got[1])
        if got != want:
            raise ValueError(f"{path} was made with seed {got[0]} and {got[1]} steps, this run asks for seed "
                             f"{want[0]} and {want[1]} steps: use another --ckpt-dir, or --force to redo "
                             "every stage")
        for key, value in stage.settings:
            if made.get(key) != value:
                raise ValueError(f"{path} was made with {key} {made.get(key)}, this run asks for {value}: "
                                 "use another --ckpt-dir, or --force to redo every stage")


def reusable_metrics(path: Path, seed: int, quick: bool, models: tuple[str, ...] = ()) -> bool:
    """True if `path` is a readable metrics.json that evaluate.py wrote for this seed and --quick setting,
    with every model in `models` (the controls asked for) in it."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(metrics, dict) and metrics.get("seed") == seed and metrics.get("quick") == quick
            and all(name in metrics.get("models", {}) for name in models))


_print_lock = threading.Lock()


def say(text: str) -> None:
    """print, one whole line at a time when two chains report at once."""
    with _print_lock:
        print(text, flush=True)


def run_script(script: str, args: list[str], log: Path | None = None, running: dict | None = None) -> None:
    """Run one of the repository's scripts with this interpreter; a failure stops the pipeline. With `log`,
    its output goes to that file (tqdm refreshing every 10 s, not 10 times a second) and the process is
    kept in `running` ({process: log}) while it runs, so a failure elsewhere can stop it cleanly."""
    command = [sys.executable, str(REPO / script), *args]
    # under torchrun the stages are ordinary one-process runs: they must not join the sweep's process group
    env = {k: v for k, v in os.environ.items()
           if k not in TORCHRUN_VARIABLES and not k.startswith("TORCHELASTIC")}
    if "LOCAL_RANK" in os.environ:  # each process of a sweep runs its stages on its own GPU
        env.setdefault("CUDA_VISIBLE_DEVICES", os.environ["LOCAL_RANK"])
    say("$ " + " ".join(["python", script, *args]) + (f"    (output: {log})" if log else ""))
    if log is None:
        code = subprocess.call(command, cwd=REPO, env=env)
    else:
        with open(log, "w") as out:
            process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                       env={**env, "TQDM_MININTERVAL": "10"})
            running[process] = log
            try:
                code = process.wait()
            finally:
                running.pop(process, None)
    if code != 0:
        raise StageFailed(script, code, log)


TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                      "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR",
                      "MASTER_PORT")


class StageFailed(Exception):
    def __init__(self, script: str, code: int, log: Path | None = None):
        where = f"the end of {log}:\n" + last_lines(log, 5) if log else "its message is above"
        super().__init__(f"{script} exited with code {code}; {where}")
        self.code = code


def last_lines(path: Path, n: int) -> str:
    """The last n lines of a log, each tqdm bar reduced to its latest state (bars rewrite one line with
    \\r)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join(line for line in lines[-n:] if line.strip())


def banner(text: str) -> None:
    say(f"\n=== {text} " + "=" * max(0, 70 - len(text)))


def run_stage(stage: Stage, ckpt_dir: Path, flags: list[str], force: bool, timings: dict[str, float],
              log_dir: Path | None = None, running: dict | None = None) -> None:
    """One stage unless its finished checkpoint exists; resumes an interrupted one; records its wall time."""
    path = ckpt_dir / stage.output
    state = "missing" if force else checkpoint_state(path)
    if state == "done":
        banner(f"{stage.name}: {path} exists, skipped (--force redoes it)")
        return
    resume = [stage.resume_flag] if state == "partial" and stage.resume_flag else []
    banner(f"{stage.name}" + (" (resuming)" if resume else ""))
    start = time.perf_counter()
    log = log_dir / f"{stage.name}.log" if log_dir else None
    run_script(stage.script, [*stage.args, *flags, *resume], log, running)
    timings[stage.name] = time.perf_counter() - start
    done = f"--- {stage.name} took {timings[stage.name]:.0f} s"
    say(done + (f": {last_lines(log, 1)}" if log else ""))


def run_side_by_side(stage_list: list[Stage], ckpt_dir: Path, flags: list[str], force: bool,
                     timings: dict[str, float], jobs: int = 2, heartbeat_s: float = 60.0) -> None:
    """Run each stage, in its own thread (each still a child process with its own log file), once the stage
    it starts from has finished, at most `jobs` at a time, earlier stages of the list first. If a stage
    fails, the running ones are asked to stop (SIGINT: they save a resumable checkpoint), none starts any
    more, and the failure is raised; every `heartbeat_s` the running stages' progress bars are printed."""
    log_dir = ckpt_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    running: dict[subprocess.Popen, Path] = {}
    failures: list[StageFailed] = []
    finished: set[str] = set()
    threads: dict[str, threading.Thread] = {}
    pending = list(stage_list)

    def stop_others() -> None:
        for process in list(running):
            process.send_signal(signal.SIGINT)

    def work(stage: Stage) -> None:
        try:
            run_stage(stage, ckpt_dir, flags, force, timings, log_dir, running)
            finished.add(stage.name)
        except StageFailed as failure:
            failures.append(failure)
            stop_others()

    try:
        while True:
            for name in [name for name, thread in threads.items() if not thread.is_alive()]:
                threads.pop(name)
            if failures:
                break
            for stage in [s for s in pending if not s.after or s.after in finished]:
                if len(threads) < jobs:
                    pending.remove(stage)
                    threads[stage.name] = threading.Thread(target=work, args=(stage,), daemon=True)
                    threads[stage.name].start()
            if not threads:
                break
            waited = time.perf_counter()
            while all(t.is_alive() for t in threads.values()) and time.perf_counter() - waited < heartbeat_s:
                time.sleep(0.05)
            bars = [f"{log.stem}: {bar}" for log in list(running.values()) if (bar := last_lines(log, 1))]
            if bars and time.perf_counter() - waited >= heartbeat_s:
                say("... " + " | ".join(bars))
    except KeyboardInterrupt:
        stop_others()  # the terminal's Ctrl-C reached them too; a SIGINT sent to this process alone did not
        raise
    finally:
        for thread in list(threads.values()):
            thread.join()
    if failures:
        raise failures[0]
    if pending:  # cannot happen with stages(): every `after` names an earlier stage
        raise RuntimeError(f"stages never started: {[s.name for s in pending]}")


def run_seed(seed: int, ckpt_dir: Path, out_dir: Path, common: list[str], small: str, large: str,
             quick: bool, force: bool, jobs: int = 1, controls: tuple[str, ...] = ()) -> dict[str, float]:
    """Every stage for one seed; returns the wall time of each stage that ran (seconds). jobs >= 2 runs up to
    that many stages side by side (run_side_by_side), each with 1/jobs of the CPU threads unless --threads
    was given."""
    timings: dict[str, float] = {}
    seed_flags = ["--seed", str(seed), "--ckpt-dir", str(ckpt_dir), *common]
    todo = stages(small, large, quick, controls)
    if not force:
        check_reusable(todo, ckpt_dir, seed)
    if jobs > 1:
        if "--threads" not in common:
            seed_flags += ["--threads", str(max(1, (os.cpu_count() or 1) // jobs))]
        run_side_by_side(todo, ckpt_dir, seed_flags, force, timings, jobs)
    else:
        for stage in todo:
            run_stage(stage, ckpt_dir, seed_flags, force, timings)
    metrics = out_dir / "metrics.json"
    if timings or force or not reusable_metrics(metrics, seed, quick, control_models(controls, large)):
        banner("evaluate")
        start = time.perf_counter()
        run_script("evaluate.py", ["--ckpt-dir", str(ckpt_dir), "--out", str(out_dir), "--seed", str(seed),
                                   *common, *(["--quick"] if quick else [])])
        timings["evaluate"] = time.perf_counter() - start
        say(f"--- evaluate took {timings['evaluate']:.0f} s")
    else:
        banner(f"evaluate: {metrics} exists for these checkpoints, skipped (--force redoes it)")
    return timings


def flatten(tree: dict, prefix: str = "") -> dict[str, float]:
    """{'a': {'b': 1.0}} -> {'a.b': 1.0}; only finite numbers are kept (lists and strings are not
    summaries)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[name] = float(value)
    return flat


def summarise(per_seed: dict[int, dict]) -> dict[str, dict]:
    """Mean, sample standard deviation, min, max and the 95% t-interval half-width of every number that
    every seed's metrics.json has."""
    flats = [flatten(m) for m in per_seed.values()]
    common = sorted(set.intersection(*(set(f) for f in flats))) if flats else []
    summary = {}
    for key in common:
        values = [f[key] for f in flats]
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        half = t95(n - 1) * std / math.sqrt(n) if n > 1 else float("nan")
        summary[key] = {"mean": mean, "std": std, "min": min(values), "max": max(values),
                        "ci95": half if math.isfinite(half) else None, "n": n, "values": values}
    return summary


HEADLINE = [
    ("models.small-direct.accuracy.test", "small-direct accuracy (test)"),
    ("models.large-direct.accuracy.test", "large-direct accuracy (test)"),
    ("models.small-cot.accuracy.test", "small-cot accuracy (test, greedy)"),
    ("faithfulness.small-cot.no_trace_accuracy", "small-cot, no trace"),
    ("faithfulness.small-cot.corrupt_follow_rate", "follow rate under a corrupted step"),
    ("faithfulness.small-cot.filler_accuracy", "filler accuracy"),
    ("faithfulness.small-cot.paraphrase_accuracy", "paraphrase accuracy (last step rewritten)"),
    ("faithfulness.small-cot.paraphrase.words.last_step.accuracy.value",
     "paraphrase: trace translated into words"),
    ("faithfulness.small-cot.early_answer_aoc", "early-answering AOC"),
    ("monitor.small-cot.step_validity", "monitor: valid steps"),
]


# the same instruments read on each control that every seed has, beside small-cot's (`--controls`)
CONTROL_HEADLINE = [
    ("models.{}.accuracy.test", "accuracy (test, greedy)"),
    ("faithfulness.{}.no_trace_accuracy", "no trace"),
    ("faithfulness.{}.direct_prompt_accuracy", "asked directly (the direct prompt)"),
    ("faithfulness.{}.corrupt_follow_rate", "follow rate under a corrupted step"),
    ("faithfulness.{}.transplant_follow_rate", "follow rate of a transplanted trace"),
    ("faithfulness.{}.early_answer_aoc", "early-answering AOC"),
    ("faithfulness.{}.paraphrase_accuracy", "paraphrase accuracy (last step rewritten)"),
]


def seeds_report(summary: dict[str, dict], seeds: list[int], out_dir: Path) -> Path:
    """A short markdown table of the headline numbers over seeds (the full list is in seeds.json), then the
    controls' numbers beside small-cot's."""
    lines = [f"# nanocot over seeds {', '.join(map(str, seeds))}", "",
             "Mean, 95% t-interval over seeds (n = number of seeds), and every seed's value.", "",
             "| metric | mean | 95% interval | per seed |", "|---|---|---|---|"]
    rows = list(HEADLINE)
    for name in CONTROLS:
        if f"faithfulness.{name}.no_trace_accuracy" in summary:
            rows += [(key.format(name), f"{name}: {label}") for key, label in CONTROL_HEADLINE]
    for key, label in rows:
        s = summary.get(key)
        if s is None:
            continue
        ci = f"± {s['ci95']:.3f}" if s["ci95"] is not None else "n/a (one seed)"
        lines.append(f"| {label} | {s['mean']:.3f} | {ci} | {', '.join(f'{v:.3f}' for v in s['values'])} |")
    lines += ["", "Per-seed reports: " + ", ".join(f"[seed {s}](seed-{s}/report.md)" for s in seeds), ""]
    path = out_dir / "seeds.md"
    path.write_text("\n".join(lines))
    (out_dir / "seeds.json").write_text(json.dumps({"seeds": seeds, "summary": summary}, indent=1))
    return path
