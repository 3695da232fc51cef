"""Plots written next to checkpoints: a training stage's loss and accuracy curves."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str | Path) -> None:
    """Every plot ends the same way: tight layout, a PNG at a readable resolution, the figure freed."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    _save(fig, path)


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
    _save(fig, path)


def plot_pretraining(records: dict[str, dict], path: str | Path) -> None:
    """Pretraining loss of every size on one chart: what the toy corpus taught each before any task."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, record in sorted(records.items()):
        loss = smooth(record["loss"])
        ax.plot(np.arange(len(loss)) + (len(record["loss"]) - len(loss)), loss, label=name)
    ax.set(xlabel="pretraining step", ylabel="training loss (nats/token, smoothed)", yscale="log",
           title="pretraining on the toy corpus")
    ax.legend(fontsize=8)
    _save(fig, path)


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
    _save(fig, path)


# ---- evaluation plots (evaluate.py): each takes the metrics dict it shows ----------------------------------

def plot_accuracy(metrics: dict, path: str | Path) -> None:
    """Accuracy of every model on every split, with 95% intervals as error bars."""
    models = list(metrics["models"])
    splits = list(next(iter(metrics["models"].values()))["intervals"]) if models else []
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(splits) * max(1, len(models)) / 2), 3.8))
    width = 0.8 / max(1, len(models))
    for i, name in enumerate(models):
        rates = [metrics["models"][name]["intervals"][s] for s in splits]
        x = np.arange(len(splits)) + i * width
        v = np.array([r["value"] for r in rates])
        err = np.clip([[r["value"] - r["lo"] for r in rates], [r["hi"] - r["value"] for r in rates]], 0, 1)
        ax.bar(x, v, width, yerr=err, capsize=2, label=name)
    ax.set_xticks(np.arange(len(splits)) + 0.4 - width / 2, splits)
    ax.set(ylabel="greedy exact-match accuracy", ylim=(0, 1.05),
           title="accuracy by split (95% Wilson intervals)")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_mistakes(faithfulness: dict, path: str | Path) -> None:
    """Follow rate and accuracy vs the position of the corrupted step (off-by-one), for (A) continue and
    (B) keep-the-rest."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, f in faithfulness.items():
        for mode, ls in (("continue", "-"), ("keep", "--")):
            by_step = f["mistakes"][f"off_by_one/{mode}"]["by_step"]
            steps = sorted(by_step, key=int)
            for ax, key in zip(axes, ("follow_rate", "accuracy")):
                ax.plot([int(s) for s in steps], [by_step[s][key]["value"] for s in steps], ls, marker="o",
                        label=f"{name} ({'A' if mode == 'continue' else 'B'}: {mode})")
    for ax, label in zip(axes, ("follow rate (answer = corrupted chain's value)",
                                "accuracy after corruption")):
        ax.set(xlabel="corrupted step", ylabel=label, ylim=(-0.02, 1.02))
        ax.legend(fontsize=7)
    fig.suptitle("adding mistakes: off-by-one result in one step")
    _save(fig, path)


def plot_paraphrase(faithfulness: dict, path: str | Path) -> None:
    """Accuracy after each paraphraser (with 95% intervals), per CoT model, on traces it got right whose last
    step (the value the answer repeats) was rewritten (bars); a dot marks the accuracy over every trace, where
    a paraphrase too long for the context rewrote only some steps. The gap to 1 is the room left for content
    hidden in the trace's surface form (or, here, for a surface form the model cannot read)."""
    fig, ax = plt.subplots(figsize=(7.0, 3.8))
    names = list(faithfulness)
    width = 0.8 / max(1, len(names))
    labels: list[str] = []
    for i, name in enumerate(names):
        para = {k: v for k, v in faithfulness[name]["paraphrase"].items()
                if isinstance(v, dict) and "accuracy" in v}
        labels = list(para)  # "canonical" re-renders the trace unchanged: the control bar
        stats = [v["last_step"]["accuracy"] for v in para.values()]
        xs = np.arange(len(labels)) + i * width
        values = [st["value"] for st in stats]
        errors = [[st["value"] - st["lo"] for st in stats], [st["hi"] - st["value"] for st in stats]]
        ax.bar(xs, values, width, yerr=errors, capsize=2, label=f"{name}, last step rewritten")
        ax.plot(xs, [v["accuracy"]["value"] for v in para.values()], "o", color="black", markersize=4,
                label="every trace (some rewritten in part)" if i == 0 else None)
    # every model has the same paraphrasers
    ax.set_xticks(np.arange(len(labels)) + width * (len(names) - 1) / 2, labels)
    ax.set(ylabel="accuracy after the paraphrased trace", ylim=(0, 1.05),
           title="paraphrase: does the answer survive a rewrite?")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_early_answering(faithfulness: dict, path: str | Path) -> None:
    """Share of answers equal to the full trace's answer vs fraction of the trace kept, per trace length;
    the dotted line is a perfectly faithful executor (it answers with the value its cut trace last wrote)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, f in faithfulness.items():
        for n, ys in f["early"]["curves"].items():
            n = int(n)
            ax.plot(np.arange(n + 1) / n, ys, marker="o",
                    label=f"{name}, {n} steps (AOC {f['early']['aoc']:.2f})")
        for n, ys in f["early"]["executor_curves"].items():
            n = int(n)
            ax.plot(np.arange(n + 1) / n, ys, ":", color="grey",
                    label=f"executor, {n} steps (AOC {f['early']['aoc_executor']:.2f})")
    ax.set(xlabel="fraction of the trace kept (k / n steps)", ylabel="same answer as the full trace",
           ylim=(-0.02, 1.02), title="early answering")
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_probes(black_box: dict, path: str | Path) -> None:
    """Linear-probe accuracy vs layer (0 = embeddings) for the sum and the sum mod m, per model."""
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, b in black_box.items():
        probes = b["probes"]
        line, = ax.plot(probes["layers"], probes["mod"], marker="o", label=f"{name}: sum mod m")
        ax.plot(probes["layers"], probes["sum"], "--", marker="s", color=line.get_color(),
                label=f"{name}: sum")
    ax.set(xlabel="layer (0 = embeddings)", ylabel="probe accuracy (held-out)", ylim=(-0.02, 1.02),
           title="linear probes at the answer position")
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_attention(maps: list, labels: list[str], path: str | Path, title: str) -> None:
    """Attention pattern of every layer and head for one sequence (rows: queries, columns: keys)."""
    n_layer, n_head = len(maps), maps[0].shape[0]
    fig, axes = plt.subplots(n_layer, n_head, figsize=(2.6 * n_head + 1, 2.6 * n_layer + 0.5), squeeze=False)
    shown = [repr(t)[1:-1] for t in labels]
    for layer, pattern in enumerate(maps):
        for head in range(n_head):
            ax = axes[layer, head]
            ax.imshow(pattern[head].numpy(), cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            ticks = range(len(shown))
            ax.set_xticks(ticks, shown, fontsize=5, rotation=90)
            ax.set_yticks(ticks, shown, fontsize=5)
    fig.suptitle(f"attention: {title}")
    _save(fig, path)


def plot_controls(names: list[str], roles: list[str], rows: list[tuple[str, list]], path: str | Path) -> None:
    """Each instrument (a group of bars) read on the model under test and on each control (one bar each),
    with the 95% interval where the measure has one: an instrument is trusted where the bars differ as the
    controls' roles say they should."""
    fig, ax = plt.subplots(figsize=(11, 4.6))
    width = 0.8 / len(names)
    for i, (name, role) in enumerate(zip(names, roles)):
        values = [row[1][i] for row in rows]
        heights = [v["value"] if isinstance(v, dict) else (v if v is not None else np.nan) for v in values]
        low = [h - v["lo"] if isinstance(v, dict) else 0 for h, v in zip(heights, values)]
        high = [v["hi"] - h if isinstance(v, dict) else 0 for h, v in zip(heights, values)]
        ax.bar(np.arange(len(rows)) + (i - (len(names) - 1) / 2) * width, heights, width, yerr=[low, high],
               capsize=2, label=f"{name} ({role})")
    ax.set_xticks(np.arange(len(rows)), [label.split(" (")[0] for label, _ in rows], rotation=25, ha="right",
                  fontsize=8)
    ax.set(ylabel="rate (AOC: area)", ylim=(0, 1.05))
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.01), ncol=2)
    _save(fig, path)


def plot_compute(metrics: dict, path: str | Path) -> None:
    """Test accuracy vs inference FLOPs per answer, one point per model (the price of writing a trace)."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, c in metrics["compute"].items():
        rate = metrics["models"][name]["intervals"]["test"]
        ax.errorbar([c["inference_flops_per_answer"]], [rate["value"]],
                    yerr=np.clip([[rate["value"] - rate["lo"]], [rate["hi"] - rate["value"]]], 0, 1), fmt="o",
                    capsize=3, label=name)
    ax.set(xscale="log", xlabel="inference FLOPs per answer (forward, prompt + generated)",
           ylabel="test accuracy", ylim=(-0.02, 1.05), title="accuracy vs inference compute")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_inside(inside: dict, path: str | Path, title: str) -> None:
    """interpret.py's analysis of one direct model: probe R² per layer (with intervals), where each head at
    "=" looks, and how often the answer moves to (s + δ) mod m when the sum is moved after block 1."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    ax = axes[0]
    for name, per_layer in inside["probes"].items():
        values = np.array([r["value"] for r in per_layer])
        errors = np.array([[r["value"] - r["lo"], r["hi"] - r["value"]] for r in per_layer]).T
        ax.errorbar(np.arange(len(values)), values, yerr=np.maximum(errors, 0), marker="o", capsize=3,
                    label=name)
    ax.set_xticks(range(len(inside["probes"]["sum"])))
    ax.set(xlabel="layer (0 = embeddings)", ylabel="linear probe R² (held out)", ylim=(-0.05, 1.05),
           title=f"{title}: what the residual at '=' holds")
    ax.legend()
    ax = axes[1]
    heads, bottom = inside["heads"], np.zeros(len(inside["heads"]))
    for part in ("operands", "modulus", "%", "other"):
        share = np.array([h[part] for h in heads])
        ax.bar([h["site"] for h in heads], share, bottom=bottom, label=part)
        bottom += share
    ax.set(ylabel="attention from '='", ylim=(0, 1.02), title="where each head looks")
    ax.legend(fontsize=8)
    ax = axes[2]
    for way, rows in inside["steering"]["sum"]["resid1"].items():
        if way in ("linear", "interchange"):
            ax.plot([int(d) for d in rows], [r["value"] for r in rows.values()], marker="o", label=way)
            ax.set_xticks([int(d) for d in rows])
    ax.set(xlabel="δ added to the sum after block 1", ylabel="answers that become (s + δ) mod m",
           ylim=(-0.02, 1.02), title="moving the sum")
    ax.legend()
    _save(fig, path)
