"""Shared command-line plumbing: one-line errors with exit code 2, device choice, checkpoint paths.

A user mistake (bad flag, missing checkpoint, unwritable folder) must print one line on stderr and exit
with code 2, never a traceback; `run_cli` turns the errors the library raises for bad input into that.
"""

import argparse
import math
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from nanocot import checkpoint, distributed, fast
from nanocot.fast import cuda_graphs
from nanocot.paraphrase import PARAPHRASERS


class UsageError(Exception):
    """A mistake in what the user asked for."""


def one_line(text: str) -> str:
    """Escape control characters (newline, and the other line breaks of str.splitlines such as \\x1e), so
    a value the user typed (a path, a stray argument) cannot split the one error line."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line (`prog: error: ...`) instead of usage + error."""

    def error(self, message: str):
        print(f"{self.prog}: error: {one_line(message)} (see --help)", file=sys.stderr)
        sys.exit(2)


def first_paragraph(doc: str) -> str:
    """A script's docstring up to its first blank line, as one line: the `--help` description (its first line
    alone can stop mid-sentence)."""
    return " ".join(doc.strip().split("\n\n", 1)[0].split())


def _checked(text: str, cast, ok, requirement: str):
    """Parse `text` with `cast` and check it with `ok`; argparse turns the error into one line."""
    try:
        value = cast(text)
    except ValueError:
        kind = "a whole number" if cast is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _checked(text, int, lambda v: v > 0, "> 0")


def probability(text: str) -> float:
    return _checked(text, float, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")


def adam_beta(text: str) -> float:
    """An Adam averaging coefficient: 0 <= beta < 1 (1 would never update its average)."""
    return _checked(text, float, lambda v: 0.0 <= v < 1.0, "in [0, 1)")


def positive_float(text: str) -> float:
    return _checked(text, float, lambda v: v > 0 and math.isfinite(v), "a finite number > 0")


def nonnegative_int(text: str) -> int:
    """For counts where 0 means off (top-k, lr warm-up steps)."""
    return _checked(text, int, lambda v: v >= 0, ">= 0")


def nonnegative_float(text: str) -> float:
    """For coefficients where 0 means off (KL, entropy, weight decay): finite and >= 0, so nan/inf are
    refused."""
    return _checked(text, float, lambda v: v >= 0 and math.isfinite(v), "a finite number >= 0")


def paraphraser_names(text: str) -> str:
    """A comma-separated list of paraphrasers from nanocot/paraphrase.py, e.g. 'reword,words'."""
    unknown = [n for n in text.split(",") if n not in PARAPHRASERS]
    if unknown:  # "" splits to [""], so an empty list lands here too
        raise argparse.ArgumentTypeError(f"unknown paraphraser(s) {unknown}; choose from "
                                         f"{', '.join(PARAPHRASERS)}")
    return text


def seed_list(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; '0-3,7' -> [0, 1, 2, 3, 7]: distinct non-negative whole numbers (--seeds of the
    pipeline and of the sweeps)."""
    try:
        seeds = []
        for part in (p.strip() for p in text.split(",")):
            first, _, last = part.partition("-")
            if part and last and int(last) < int(first):
                raise ValueError(part)
            if part:
                seeds += list(range(int(first), int(last) + 1)) if last else [int(part)]
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated integers or ranges, e.g. 0,1,2 or 0-31; "
                                         f"got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct non-negative integers, e.g. 0,1,2; got {text!r}")
    return seeds


def seed_int(text: str) -> int:
    return _checked(text, int, lambda v: 0 <= v < 2**32, "in [0, 2**32)")


def add_run_flags(p: argparse.ArgumentParser, seed_help: str) -> None:
    """The flags every training script shares: seed, device, threads, checkpoint folder."""
    p.add_argument("--seed", type=seed_int, default=0, help=f"{seed_help} (default: 0)")
    p.add_argument("--device", default="auto",
                   help="auto (cuda > mps > cpu), cpu, cuda or mps (default: auto)")
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--ckpt-dir", default="out", help="folder for checkpoints and plots (default: out)")
    p.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto",
                   help="under torchrun, how the processes talk: auto = nccl on CUDA, gloo on a CPU "
                        "(default: auto)")
    add_graph_flag(p)


def add_graph_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-cuda-graphs", action="store_true", help="on CUDA, launch every kernel from Python "
                   "instead of replaying recorded training and sampling steps (nanocot/fast/cuda_graphs.py); "
                   "slower, for comparison")
    p.add_argument("--plain", action="store_true", help="run the plain core everywhere, every fast path off "
                   "(nanocot/fast/): the same computations, slower; samples are drawn differently")


def apply_graph_flag(args: argparse.Namespace) -> None:
    cuda_graphs.ENABLED = not args.no_cuda_graphs
    fast.ENABLED = not args.plain


def setup_device(args: argparse.Namespace) -> torch.device:
    """Apply --device, --threads, --no-cuda-graphs and --plain (every script has them)."""
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    apply_graph_flag(args)
    return device


def setup_run(args: argparse.Namespace) -> tuple[torch.device, Path]:
    """Apply the training scripts' shared flags: the device ones, joining torchrun's processes if launched
    by it (the first process then says `world size N` first), and check the folder is writable."""
    device = setup_device(args)
    if distributed.launched():
        world = distributed.init(device, args.backend)
        if world.main:
            print(f"world size {world.size}", flush=True)
        distributed.gather(None)  # the others print nothing before that line
    return device, writable_dir(args.ckpt_dir)


def pick_device(name: str) -> torch.device:
    """'auto' picks cuda > mps > cpu; anything else must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    # torch also knows meta, xla, ...: not ours
    if name != "cpu" and name != "mps" and not name.startswith("cuda"):
        raise UsageError(f"unknown device {name!r}: use auto, cpu, cuda or mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("device 'mps' requested but MPS is not available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}: use auto, cpu, cuda or mps") from None


def writable_dir(path: str) -> Path:
    """Create `path` if needed and check that files can be written there."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise UsageError(f"cannot create folder {folder}: {getattr(e, 'strerror', None) or e}") from None
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UsageError(f"folder {folder} is not writable")
    return folder


class ResumableSaves:
    """Writes a training run's resumable checkpoints and remembers the last step on disk, so an interrupt can
    say exactly what was kept and which command continues it."""

    def __init__(self, path: Path, resume_command: str):
        self.path, self.resume_command, self.last_step = path, resume_command, None

    def save(self, payload: dict, step: int) -> None:
        checkpoint.save(self.path, payload)
        self.last_step = step

    @contextmanager
    def reporting_interrupts(self):
        """Inside the block, Ctrl-C (or SIGTERM) exits 130 naming the last saved step and the resume command;
        if this run saved nothing, the interrupt goes on to run_cli, which says nothing was written."""
        try:
            yield
        except KeyboardInterrupt:
            if self.last_step is None:
                raise
            print(f"interrupted: saved {self.path} at step {self.last_step}; continue exactly with "
                  f"`{self.resume_command}`", file=sys.stderr)
            sys.exit(130)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_cli(main, interrupted: str = "interrupted: nothing was written for the unfinished stage") -> None:
    """Run `main()`; user-facing errors become one line on stderr and exit code 2: a script's UsageError, and
    the ValueError the library raises for bad input (CheckpointError is one). SIGTERM is treated like Ctrl-C,
    so a stage that saves on interrupt also saves when the system asks it to stop; the `interrupted` line
    then tells the user what was kept and how to continue."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        try:
            main()
        finally:
            distributed.close()
    except (UsageError, ValueError) as e:  # CheckpointError is a ValueError
        _say(f"error: {one_line(str(e))}")
        sys.exit(2)
    except FloatingPointError as e:  # training diverged: say where, keep whatever was saved before
        _say(f"error: training diverged ({e}); stopped before the bad update, the last good checkpoint on "
             "disk (if any) is kept; try a lower --lr")
        sys.exit(1)
    except KeyboardInterrupt:
        _say(interrupted)
        sys.exit(130)


def _say(line: str) -> None:
    """A closing line on stderr; under torchrun the first process speaks for all (same exit code each)."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr)
