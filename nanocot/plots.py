"""Plots written next to checkpoints: a training stage's loss and accuracy curves."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def smooth(values: list[float], window: int = 25) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if len(values) < window:
        return values
    return np.convolve(values, np.ones(window) / window, mode="valid")


def plot_stage(record: dict, path: str | Path, title: str) -> None:
    """Training loss (left) and periodic held-out / train accuracy (right, if the stage evaluated)."""
    has_eval = bool(record.get("eval"))
    fig, axes = plt.subplots(1, 2 if has_eval else 1, figsize=(10 if has_eval else 5, 3.5), squeeze=False)
    ax = axes[0, 0]
    loss = smooth(record["loss"])
    ax.plot(np.arange(len(loss)) + (len(record["loss"]) - len(loss)), loss)
    ax.set(xlabel="step", ylabel="training loss (nats/token, smoothed)", yscale="log", title=title)
    if has_eval:
        ax = axes[0, 1]
        steps = [e["step"] for e in record["eval"]]
        for key in sorted(k for k in record["eval"][0] if k != "step"):
            ax.plot(steps, [e[key] for e in record["eval"]], marker=".", label=key.replace("_", " "))
        ax.set(xlabel="step", ylabel="exact-match accuracy", ylim=(0, 1.02), title=title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rl(record: dict, path: str | Path, title: str) -> None:
    """An RL run: mean reward per step (and its moving average), held-out accuracy, trace length."""
    steps = [s["step"] for s in record["steps"]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    ax = axes[0]
    ax.plot(steps, [s["reward"] for s in record["steps"]], alpha=0.3, label="batch mean")
    ax.plot(steps, [s["reward_avg"] for s in record["steps"]], label="moving average")
    ax.set(xlabel="RL step", ylabel="reward (fraction correct, sampled)", ylim=(0, 1.02), title=title)
    ax.legend()
    ax = axes[1]
    evals = record["eval"]
    for key in [k for k in evals[0] if k != "step"]:
        ax.plot([e["step"] for e in evals], [e[key] for e in evals], marker=".", label=key.replace("_", " "))
    ax.set(xlabel="RL step", ylabel="held-out accuracy (k = target)", ylim=(0, 1.02), title="held-out")
    ax.legend()
    ax = axes[2]
    lengths = smooth([s["trace_length"] for s in record["steps"]], 10)
    ax.plot(steps[len(steps) - len(lengths):], lengths)  # a moving average starts window-1 steps late
    ax.set(xlabel="RL step", ylabel="sampled completion length (tokens)", title="trace length")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_direct_comparison(records: dict[str, dict], path: str | Path) -> None:
    """Direct-answer SFT of every size on one chart: held-out (solid) and train (dashed) accuracy vs step.
    The premise reads off it: large rises, small stays flat at a budget several times larger."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, record in sorted(records.items()):
        steps = [e["step"] for e in record["eval"]]
        line, = ax.plot(steps, [e["test_accuracy"] for e in record["eval"]], label=f"{name} held-out")
        ax.plot(steps, [e["train_accuracy"] for e in record["eval"]], ls="--", color=line.get_color(),
                label=f"{name} train")
    ax.axhline(0.95, color="grey", lw=0.5)
    ax.axhline(0.40, color="grey", lw=0.5)
    ax.set(xlabel="direct SFT step", ylabel="exact-match accuracy (k = 4 operands)", ylim=(0, 1.02),
           title="direct-answer SFT: large vs small")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
