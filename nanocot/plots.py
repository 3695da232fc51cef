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
