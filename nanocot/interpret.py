"""Opening the black box: how a direct-answer model computes (x1 + ... + xk) mod m, tested causally.

The direct prompt "\\n8+7+12+5%21=" has the answer produced at its last token, "=". Everything here reads
or edits the model at that position:

1. **Probes**: least-squares linear probes after every layer for the raw sum s, the modulus m, the quotient
   s // m and the answer s mod m, fitted on training-split problems and scored (R², bootstrap 95% interval)
   on held-out ones. A high R² says a value is *readable*, not that the model *uses* it.
2. **Heads**: where each head at "=" looks: the operand tokens, the modulus token, or elsewhere.
3. **Causal tests**, through PyTorch hooks on the unchanged model (`edited`):
   - steering: add δ times the probe's sum (or modulus) direction to the residual at "=" and count
     answers that move to (s + δ) mod m (or s mod (m + δ));
   - interchange: put there instead the residual of another real problem with the same modulus and sum
     s + δ (a point the model itself produces, where a straight line may leave its manifold);
   - mean ablation of every head and every MLP;
   - activation patching between problems that differ in one operand: which component carries it.
4. **Explained accuracy** (the role of Nanda et al.'s restricted loss): the last MLP's input at "=" is
   replaced by its mean over training problems with the same (s, m). If the model computes "sum, then
   reduce", the answer survives; replaced by the mean given m alone, it must not.
5. **A fresh reducer of the model's width** trained on the frozen features at the last MLP's input, with and
   without the true modulus handed to it: does the model lack the information or the capacity?
6. **The mechanism out of distribution**: read ŝ and m̂ with the in-distribution probes and predict the
   answer round(ŝ) mod round(m̂) on the negative and larger splits; how often is that the model's answer?
"""

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch

from nanocot.model import GPT
from nanocot.probes import direct_answers, last_position_states
from nanocot.stats import proportion
from nanocot.task import DIRECT, ModularAddition, Problem, prompt
from nanocot.tokenizer import Tokenizer

QUANTITIES = ("sum", "modulus", "quotient", "answer")
SHIFTS = (-2, -1, 1, 2)


@dataclass(frozen=True)
class Site:
    """A place in the model: "resid" after block `layer` - 1 (layer >= 1), "head" `head`'s output in block
    `layer` (before the output projection mixes heads), "mlp" block `layer`'s MLP output, or "mlp_in" its
    input (the residual stream between attention and MLP)."""

    kind: str
    layer: int
    head: int = -1

    @property
    def name(self) -> str:
        return {"resid": f"resid{self.layer}", "head": f"L{self.layer}H{self.head}",
                "mlp": f"mlp{self.layer}", "mlp_in": f"mlp_in{self.layer}"}[self.kind]


def _hook_point(model: GPT, site: Site) -> tuple[torch.nn.Module, str, slice]:
    """(module, "input" or "output", the columns of that tensor that are the site)."""
    width = model.config.d_model // model.config.n_head
    if site.kind == "resid":
        if not 1 <= site.layer <= model.config.n_layer:
            raise ValueError(f"resid{site.layer}: the residual stream is edited after blocks 1..n_layer")
        return model.blocks[site.layer - 1], "output", slice(None)
    block = model.blocks[site.layer]
    if site.kind == "head":
        return block.attn.proj, "input", slice(site.head * width, (site.head + 1) * width)
    if site.kind == "mlp":
        return block.mlp, "output", slice(None)
    if site.kind == "mlp_in":
        return block.ln_mlp, "input", slice(None)
    raise ValueError(f"unknown site kind {site.kind!r}")


@contextmanager
def edited(model: GPT, edits: dict[Site, callable]):
    """Run the model with each site's activation (B, T, width) replaced by `fn(activation)`. Hooks, removed on
    exit: the model itself is never changed. `fn` may also just look (record) and return its input."""
    handles = []
    for site, fn in edits.items():
        module, where, cols = _hook_point(model, site)

        def apply(x, fn=fn, cols=cols):
            x = x.clone()
            x[..., cols] = fn(x[..., cols])
            return x

        if where == "output":
            handles.append(module.register_forward_hook(lambda m, i, out, apply=apply: apply(out)))
        else:
            handles.append(module.register_forward_pre_hook(lambda m, i, apply=apply: (apply(i[0]),)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def at_last(values: torch.Tensor):
    """An edit that writes `values` (B, width) at the last position and leaves the rest."""
    def fn(x):
        x[:, -1] = values.to(x)
        return x
    return fn


def record_last(model: GPT, ids: torch.Tensor, sites: list[Site]) -> dict[Site, torch.Tensor]:
    """Each site's activation at the last position, (B, width), float64 on the CPU."""
    seen = {}

    def keep(site):
        def fn(x):
            seen[site] = x[:, -1].detach().cpu().double()
            return x
        return fn

    with torch.no_grad(), edited(model, {s: keep(s) for s in sites}):
        model(ids)
    return seen


@torch.no_grad()
def answers_with(model: GPT, tok: Tokenizer, ids: torch.Tensor, edits: dict | None = None) -> np.ndarray:
    """Greedy answer at the last position under `edits` (-1 where the token is not a number)."""
    with edited(model, edits or {}):
        top = model(ids)[:, -1].argmax(-1).tolist()
    return np.array([int(tok.vocab[t]) if tok.is_number(t) else -1 for t in top])


# -- data ------------------------------------------------------------------------------------------


@dataclass
class Batch:
    """Same-length direct prompts as one tensor, with the quantities the algorithm would compute."""

    problems: list[Problem]
    ids: torch.Tensor
    values: dict[str, np.ndarray]  # QUANTITIES -> (N,)


def batch(tok: Tokenizer, problems: list[Problem]) -> Batch:
    encoded = [tok.encode(prompt(p, DIRECT)) for p in problems]
    if len({len(e) for e in encoded}) != 1:
        raise ValueError("interpret.batch needs prompts of one length (in-distribution, one operand count)")
    s = np.array([sum(p.operands) for p in problems])
    m = np.array([p.modulus for p in problems])
    values = {"sum": s, "modulus": m, "quotient": s // m, "answer": s % m}
    return Batch(problems, torch.tensor(encoded), values)


def _device_ids(model: GPT, b: Batch) -> torch.Tensor:
    return b.ids.to(next(model.parameters()).device)


# -- 1. probes -------------------------------------------------------------------------------------


def fit_probe(x: torch.Tensor, y: np.ndarray) -> torch.Tensor:
    """Least-squares weights (d + 1,) with a bias last: y ~ x @ w[:-1] + w[-1]."""
    a = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    return torch.linalg.lstsq(a, torch.tensor(y, dtype=x.dtype)[:, None], driver="gelsd").solution[:, 0]


def probe_predict(w: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    return (x @ w[:-1] + w[-1]).numpy()


def r_squared(pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1 - SSE/SST over the last axis (so a stack of resamples gives one R² each)."""
    return 1 - ((pred - y) ** 2).sum(-1) / np.maximum(((y - y.mean(-1, keepdims=True)) ** 2).sum(-1), 1e-12)


def r2_with_interval(pred: np.ndarray, y: np.ndarray, seed: int = 0, resamples: int = 1000) -> dict:
    """R² on held-out rows, with a percentile bootstrap 95% interval over those rows."""
    rows = np.random.default_rng(seed).integers(0, len(y), (resamples, len(y)))
    low, high = np.percentile(r_squared(pred[rows], y[rows]), [2.5, 97.5])
    return {"value": float(r_squared(pred, y)), "lo": float(low), "hi": float(high), "n": len(y)}


def layer_probes(fit: dict[int, torch.Tensor], score: dict[int, torch.Tensor], fit_b: "Batch",
                 score_b: "Batch") -> dict:
    """R² per layer (0 = embeddings) of every quantity: {quantity: [ {value, low, high, n} per layer ]}."""
    return {q: [r2_with_interval(probe_predict(fit_probe(fit[layer], fit_b.values[q]), score[layer]),
                                 score_b.values[q].astype(float)) for layer in sorted(fit)]
            for q in QUANTITIES}


def residuals(model: GPT, tok: Tokenizer, b: Batch) -> dict[int, torch.Tensor]:
    """The residual stream at "=" after the embedding (0) and after every block: {layer: (N, d)}."""
    states = last_position_states(model, tok, [prompt(p, DIRECT) for p in b.problems])
    return {layer: x.double() for layer, x in enumerate(states)}


# -- 2. heads --------------------------------------------------------------------------------------


def head_roles(model: GPT, tok: Tokenizer, b: Batch) -> list[dict]:
    """Per head, the mean attention from "=" on the operand tokens, the modulus token, the "%" before it and
    everything else; its role is the largest of the four."""
    ids = b.ids[0].tolist()
    mod_pos = ids.index(tok.token_to_id["%"]) + 1
    operand_pos = [i for i, t in enumerate(ids) if tok.is_number(t) and i != mod_pos]
    with torch.no_grad():
        _, acts = model(_device_ids(model, b), record=True)
    out = []
    for layer, pattern in enumerate(acts["attn"]):  # (B, nh, T, T)
        last = pattern[:, :, -1].mean(0).cpu()  # (nh, T)
        for head, row in enumerate(last):
            shares = {"operands": float(row[operand_pos].sum()), "modulus": float(row[mod_pos]),
                      "%": float(row[mod_pos - 1])}
            shares["other"] = max(0.0, 1.0 - sum(shares.values()))
            role = max(shares, key=shares.get)
            out.append({"site": Site("head", layer, head).name, **shares, "role": role})
    return out


# -- 3. causal tests -------------------------------------------------------------------------------


def _cells(b: Batch, keys: tuple[str, ...]) -> dict[tuple, list[int]]:
    """Rows of `b` grouped by the values of `keys`, e.g. ("sum", "modulus")."""
    cells = defaultdict(list)
    for i, key in enumerate(zip(*(b.values[k].tolist() for k in keys))):
        cells[key].append(i)
    return cells


def steering(model: GPT, tok: Tokenizer, fit_b: Batch, fit_res: dict, score_b: Batch, score_res: dict,
             seed: int = 0) -> dict:
    """Move the sum (or the modulus) by δ in the residual at "=" after each block, two ways: along the
    direction a least-squares fit of the residual on (s, m) gives it (linear steering), or by writing the
    residual of a training problem with the same other value and the moved one (interchange). Counts the
    answers that become (s + δ) mod m, or s mod (m + δ)."""
    rng = np.random.default_rng(seed)
    s, m = score_b.values["sum"], score_b.values["modulus"]
    ids, cells = _device_ids(model, score_b), _cells(fit_b, ("sum", "modulus"))
    design = torch.tensor(np.stack([fit_b.values["sum"], fit_b.values["modulus"], np.ones(len(fit_b.ids))],
                                   1), dtype=torch.float64)
    out = {"sum": {}, "modulus": {}}
    for layer in range(1, model.config.n_layer + 1):
        site, here = Site("resid", layer), score_res[layer]
        encoding = torch.linalg.lstsq(design, fit_res[layer]).solution  # (3, d): d(resid)/ds, d/dm, mean
        for name, column in (("sum", 0), ("modulus", 1)):
            rows = {"linear": {}, "interchange": {}}
            for d in SHIFTS:
                moved = (s + d, m) if name == "sum" else (s, m + d)
                target = moved[0] % moved[1]
                linear = answers_with(model, tok, ids, {site: at_last(here + d * encoding[column])})
                rows["linear"][str(d)] = proportion(linear == target)
                donors = [cells.get(key) for key in zip(*(v.tolist() for v in moved))]
                has = np.array([bool(c) for c in donors])
                patch = here.clone()
                patch[has] = fit_res[layer][[int(rng.choice(c)) for c in donors if c]]
                swapped = answers_with(model, tok, ids, {site: at_last(patch)})
                rows["interchange"][str(d)] = proportion((swapped == target)[has])
            out[name][site.name] = rows
    return out


def component_sites(model: GPT) -> list[Site]:
    c = model.config
    return [Site(kind, layer, head) for layer in range(c.n_layer)
            for kind, head in [("head", h) for h in range(c.n_head)] + [("mlp", -1)]]


def mean_ablation(model: GPT, tok: Tokenizer, fit_b: Batch, score_b: Batch) -> dict:
    """Accuracy with one head's (or one MLP's) output replaced, at every position, by its mean over training
    problems: how much of the answer depends on that component."""
    means = {}

    def keep_mean(site):
        def fn(x):
            means[site] = x.mean(0, keepdim=True).detach()
            return x
        return fn

    sites = component_sites(model)
    with torch.no_grad(), edited(model, {s: keep_mean(s) for s in sites}):
        model(_device_ids(model, fit_b))
    ids, want = _device_ids(model, score_b), score_b.values["answer"]
    return {s.name: proportion(answers_with(model, tok, ids, {s: lambda x, s=s: means[s].expand_as(x)})
                               == want) for s in sites}


def one_operand_changed(task: ModularAddition, problems: list[Problem], seed: int = 0) -> list[Problem]:
    """Each problem with one operand (chosen at random) replaced by another in-range value. With operands in
    [0, m) (the default) the answer always changes."""
    rng, out = np.random.default_rng(seed), []
    for p in problems:
        i = int(rng.integers(len(p.operands)))
        bound = task.operand_bound(p.modulus)
        new = (p.operands[i] + int(rng.integers(1, bound))) % bound
        out.append(replace(p, operands=p.operands[:i] + (new,) + p.operands[i + 1:]))
    return out


def operand_patching(model: GPT, tok: Tokenizer, task: ModularAddition, score_b: Batch,
                     seed: int = 0) -> dict:
    """Activation patching: run a problem, with one component's activation at "=" taken from the same problem
    with one operand changed. The share of answers that become the changed problem's says how much of the
    operand's effect passes through that component alone."""
    other = batch(tok, one_operand_changed(task, score_b.problems, seed))
    sites = [Site("resid", layer) for layer in range(1, model.config.n_layer + 1)] + component_sites(model)
    donor = record_last(model, _device_ids(model, other), sites)
    ids, target = _device_ids(model, score_b), other.values["answer"]
    return {s.name: proportion(answers_with(model, tok, ids, {s: at_last(donor[s])}) == target)
            for s in sites}


# -- 4. explained accuracy -------------------------------------------------------------------------


def reducer_input(model: GPT, b: Batch) -> torch.Tensor:
    """The last block's MLP input at "=", (N, d): what the model's reducer reads."""
    site = Site("mlp_in", model.config.n_layer - 1)
    return record_last(model, _device_ids(model, b), [site])[site]


def explained_accuracy(model: GPT, tok: Tokenizer, fit_b: Batch, fit_x: torch.Tensor, score_b: Batch) -> dict:
    """Replace the last MLP's input at "=" by its mean over training problems that share (s, m) (restricted:
    all the reducer is left is what (s, m) determine) or share only m (excluded: the sum is gone). Rows whose
    (s, m) no training problem has are left out; `kept` is the restricted accuracy over the model's own."""
    site = Site("mlp_in", model.config.n_layer - 1)
    ids, want = _device_ids(model, score_b), score_b.values["answer"]
    base = answers_with(model, tok, ids) == want
    out = {}
    for name, keys in (("restricted", ("sum", "modulus")), ("excluded", ("modulus",))):
        cells = _cells(fit_b, keys)
        means = {key: fit_x[rows].mean(0) for key, rows in cells.items()}
        score_keys = list(zip(*(score_b.values[k].tolist() for k in keys)))
        has = np.array([key in means for key in score_keys])
        patch = torch.stack([means.get(key, fit_x.mean(0)) for key in score_keys])
        out[name] = proportion((answers_with(model, tok, ids, {site: at_last(patch)}) == want)[has])
    out["model"] = proportion(base)
    out["kept"] = out["restricted"]["value"] / max(out["model"]["value"], 1e-9)
    return out


# -- 5. information or capacity? -------------------------------------------------------------------


def train_reducer(x: torch.Tensor, y: np.ndarray, test_x: torch.Tensor, test_y: np.ndarray, width: int,
                  classes: int, seed: int = 0, steps: int = 400) -> float:
    """Held-out accuracy of a fresh LayerNorm -> MLP(width) -> linear classifier trained on features x: what a
    reducer as wide as the model's own MLP can compute from them."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.LayerNorm(x.shape[1]), torch.nn.Linear(x.shape[1], width),
                              torch.nn.GELU(), torch.nn.Linear(width, classes))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, target = x.float(), torch.tensor(y)
    gen = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(steps):
            rows = torch.randint(len(x), (256,), generator=gen)
            loss = torch.nn.functional.cross_entropy(net(x[rows]), target[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((net(test_x.float()).argmax(1).numpy() == test_y).mean())


def reducer_capacity(model: GPT, fit_b: Batch, fit_x: torch.Tensor, score_b: Batch, steps: int = 400,
                     seed: int = 0) -> dict:
    """Train fresh reducers as wide as the model's MLP on: the model's own last-MLP input at "=" (what it
    has); that plus the true modulus, or plus the true sum (a second path for one value); and the true (s, m)
    alone (all the information). A low first and a high second or third says which value the model fails to
    route to "="; a low last says the width cannot reduce even given both."""
    score_x = reducer_input(model, score_b)
    top_s = int(max(fit_b.values["sum"].max(), score_b.values["sum"].max())) + 1
    top_m = int(max(fit_b.values["modulus"].max(), score_b.values["modulus"].max())) + 1

    def onehot(v, n):
        return torch.nn.functional.one_hot(torch.tensor(v), n).double()

    def m_of(b):
        return onehot(b.values["modulus"], top_m)

    def s_of(b):
        return onehot(b.values["sum"], top_s)

    def both(fit, score):
        return torch.cat(fit, 1), torch.cat(score, 1)

    inputs = {"own": (fit_x, score_x),
              "own+modulus": both([fit_x, m_of(fit_b)], [score_x, m_of(score_b)]),
              "own+sum": both([fit_x, s_of(fit_b)], [score_x, s_of(score_b)]),
              "sum+modulus": both([s_of(fit_b), m_of(fit_b)], [s_of(score_b), m_of(score_b)])}
    return {name: train_reducer(a, fit_b.values["answer"], b, score_b.values["answer"], model.config.d_mlp,
                                top_m, seed, steps)
            for name, (a, b) in inputs.items()}


# -- 6. the mechanism out of distribution ----------------------------------------------------------


def _best_layer(fit: dict[int, torch.Tensor], y: np.ndarray) -> int:
    """The layer whose probe predicts y best on the last quarter of the fitting problems (never the scored
    ones)."""
    cut = 3 * len(y) // 4
    return max(fit, key=lambda layer: r_squared(
        probe_predict(fit_probe(fit[layer][:cut], y[:cut]), fit[layer][cut:]), y[cut:].astype(float)))


def mechanism_predictions(model: GPT, tok: Tokenizer, fit_b: Batch, fit_res: dict,
                          splits: dict[str, list[Problem]]) -> dict:
    """Read ŝ and m̂ with probes fitted in distribution and predict the answer round(ŝ) mod round(m̂), as a
    reader who had understood "sum, then reduce" would. Per split: how often that is the model's answer,
    also among the model's wrong answers (does the mechanism predict the failures?)."""
    layers = {q: _best_layer(fit_res, fit_b.values[q]) for q in ("sum", "modulus")}
    probes = {q: fit_probe(fit_res[layers[q]], fit_b.values[q]) for q in layers}
    out = {"layers": layers}
    for split, problems in splits.items():
        states = last_position_states(model, tok, [prompt(p, DIRECT) for p in problems])
        s_hat = np.rint(probe_predict(probes["sum"], states[layers["sum"]].double())).astype(int)
        m_hat = np.maximum(np.rint(probe_predict(probes["modulus"], states[layers["modulus"]].double())), 1)
        predicted = s_hat % m_hat.astype(int)
        given = np.array([-1 if a is None else a for a in direct_answers(model, tok, problems)])
        truth = np.array([p.answer for p in problems])
        wrong = given != truth
        out[split] = {"model_accuracy": proportion(~wrong), "predicts_model": proportion(predicted == given),
                      "predicts_model_errors": proportion((predicted == given)[wrong]),
                      "sum_read_exactly": proportion(s_hat == np.array([sum(p.operands) for p in problems])),
                      "modulus_read_exactly": proportion(m_hat == np.array([p.modulus for p in problems]))}
    return out


# -- all of it -------------------------------------------------------------------------------------


def analyse(model: GPT, tok: Tokenizer, task: ModularAddition, test: list[Problem],
            ood: dict[str, list[Problem]], n_fit: int, reducer_steps: int = 400, seed: int = 0) -> dict:
    """Every measurement above for one direct model. Fitting uses `n_fit` training-split problems; scoring
    uses `test` (held out) and, for the mechanism's predictions, the OOD splits too."""
    fit_b, score_b = batch(tok, task.train_sample(n_fit)), batch(tok, test)
    fit_res, score_res = residuals(model, tok, fit_b), residuals(model, tok, score_b)
    fit_x = reducer_input(model, fit_b)
    return {
        "n_fit": len(fit_b.problems), "n_score": len(score_b.problems),
        "probes": layer_probes(fit_res, score_res, fit_b, score_b),
        "heads": head_roles(model, tok, score_b),
        "steering": steering(model, tok, fit_b, fit_res, score_b, score_res, seed),
        "ablation": mean_ablation(model, tok, fit_b, score_b),
        "patching": operand_patching(model, tok, task, score_b, seed),
        "explained": explained_accuracy(model, tok, fit_b, fit_x, score_b),
        "reducer": reducer_capacity(model, fit_b, fit_x, score_b, reducer_steps, seed),
        "ood": mechanism_predictions(model, tok, fit_b, fit_res, {"test": test, **ood}),
    }
