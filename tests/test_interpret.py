"""interpret.py: the probes read a planted feature, and the steering and patching hooks do exactly what they
say, on a tiny model whose one block adds the mean of the prompt's number embeddings at '='."""

import numpy as np
import pytest
import torch
from conftest import make_model

from nanocot import interpret
from nanocot.config import TaskConfig
from nanocot.interpret import Site, at_last, edited, record_last
from nanocot.task import ModularAddition, Problem
from nanocot.tokenizer import Tokenizer

D = 32


def planted_model(tok):
    """One block whose attention is uniform (q = k = 0) and copies the residual (v = proj = identity) and
    whose MLP is off; number n embeds as n along the first axis and every other token off it. At '=' the first
    axis of the residual after the block is then (x1 + ... + xk + m) / T: linear in the sum at one m."""
    model = make_model(len(tok), n_layer=1, n_head=2, d_model=D, d_mlp=16)
    with torch.no_grad():
        for p in model.blocks[0].parameters():
            p.zero_()
        block = model.blocks[0]
        block.ln_attn.weight.fill_(1.0)
        block.ln_mlp.weight.fill_(1.0)
        block.attn.qkv.weight[2 * D:] = torch.eye(D)  # values = the (normalised) residual
        block.attn.proj.weight.copy_(torch.eye(D))
        model.W_pos.weight.zero_()
        model.W_E.weight[:, 0] = 0.0
        for n in range(100):
            model.W_E.weight[tok.number_id(n), 0] = float(n)
        block.ln_attn = torch.nn.Identity()  # keep the planted axis unnormalised
    return model.eval()


def one_modulus_problems(n: int, m: int = 13, seed: int = 0) -> list[Problem]:
    rng = np.random.default_rng(seed)
    return [Problem(tuple(int(x) for x in rng.integers(0, m, 4)), m) for _ in range(n)]


def test_probe_reads_the_planted_sum_and_only_after_the_block(tok):
    model = planted_model(tok)
    fit, score = (interpret.batch(tok, one_modulus_problems(n, seed=s)) for n, s in ((400, 0), (200, 1)))
    fit_res, score_res = interpret.residuals(model, tok, fit), interpret.residuals(model, tok, score)
    probes = interpret.layer_probes(fit_res, score_res, fit, score)
    after = probes["sum"][1]
    assert after["value"] > 0.999 and after["lo"] <= after["value"] <= after["hi"] and after["n"] == 200
    assert abs(probes["sum"][0]["value"]) < 0.05  # the embedding of '=' is the same for every problem
    assert probes["answer"][1]["value"] < 0.9  # s mod m is not linear in s


def test_r2_interval_is_about_zero_on_noise():
    rng = np.random.default_rng(0)
    x, y = torch.tensor(rng.normal(size=(600, 8))), rng.normal(size=600)
    w = interpret.fit_probe(x[:400], y[:400])
    r2 = interpret.r2_with_interval(interpret.probe_predict(w, x[400:]), y[400:])
    assert r2["lo"] < 0.0 < r2["hi"] + 0.05 and r2["value"] < 0.1


def test_steering_along_the_planted_axis_moves_exactly_that_axis(tok):
    model = planted_model(tok)
    b = interpret.batch(tok, one_modulus_problems(50))
    clean = record_last(model, b.ids, [Site("resid", 1)])[Site("resid", 1)]
    push = torch.zeros(D, dtype=torch.float64)
    push[0] = 3.0
    with torch.no_grad(), edited(model, {Site("resid", 1): at_last(clean + push)}):
        steered = model.features(b.ids)[0][:, -1].double()
    assert torch.allclose(steered - clean, push.expand_as(clean), atol=1e-5)
    # the fitted encoding of the sum recovers the planted axis: 1 / T per unit of sum
    design = torch.tensor(np.stack([b.values["sum"], np.ones(50)], 1), dtype=torch.float64)
    encoding = torch.linalg.lstsq(design, clean).solution[0]
    assert encoding[0].item() == pytest.approx(1 / b.ids.shape[1], rel=1e-4)


def test_patching_hands_over_the_donor_state_and_hooks_leave_no_trace(tok):
    model = make_model(len(tok), n_layer=2, n_head=2, d_model=D, d_mlp=16).eval()
    base, donor = (interpret.batch(tok, one_modulus_problems(20, seed=s)) for s in (0, 1))
    with torch.no_grad():
        before = model(base.ids)
        donor_logits = model(donor.ids)
    last = Site("resid", 2)
    donor_state = record_last(model, donor.ids, [last])[last]
    with torch.no_grad(), edited(model, {last: at_last(donor_state)}):
        patched = model(base.ids)
    assert torch.allclose(patched[:, -1], donor_logits[:, -1], atol=1e-5)  # the last state decides the answer
    assert torch.allclose(patched[:, :-1], before[:, :-1])  # other positions untouched
    # one head's output patched from the donor equals the donor run's, the other head keeps its own
    head = Site("head", 1, 0)
    donor_head = record_last(model, donor.ids, [head])[head]
    seen = {}
    with torch.no_grad(), edited(model, {head: at_last(donor_head)}):
        after = record_last(model, base.ids, [head, Site("head", 1, 1)])
        seen.update(after)
    own = record_last(model, base.ids, [Site("head", 1, 1)])[Site("head", 1, 1)]
    assert torch.allclose(seen[head], donor_head) and torch.allclose(seen[Site("head", 1, 1)], own)
    with torch.no_grad():
        assert torch.equal(model(base.ids), before)  # every hook removed on exit
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_mean_ablation_of_every_component_is_reported(tok):
    model = make_model(len(tok), n_layer=2, n_head=2, d_model=D, d_mlp=16).eval()
    fit, score = (interpret.batch(tok, one_modulus_problems(40, seed=s)) for s in (0, 1))
    out = interpret.mean_ablation(model, tok, fit, score)
    assert set(out) == {"L0H0", "L0H1", "mlp0", "L1H0", "L1H1", "mlp1"}
    assert all(r["n"] == 40 for r in out.values())


def test_reducer_learns_the_answer_from_sum_and_modulus():
    task, tok = ModularAddition(TaskConfig()), Tokenizer()
    fit, score = interpret.batch(tok, task.train_sample(3000)), interpret.batch(tok, task.test_set(300))
    def features(b):
        one_hot = torch.nn.functional.one_hot
        return torch.cat([one_hot(torch.tensor(b.values["sum"]), 120),
                          one_hot(torch.tensor(b.values["modulus"]), 30)], 1).double()

    got = interpret.train_reducer(features(fit), fit.values["answer"], features(score),
                                  score.values["answer"], width=128, classes=30, steps=600)
    noise = interpret.train_reducer(torch.randn(3000, 8), fit.values["answer"], torch.randn(300, 8),
                                    score.values["answer"], width=128, classes=30, steps=100)
    assert got > 0.6 and noise < 0.2


def _rate(v: float) -> dict:
    return {"value": v, "lo": v, "hi": v, "n": 100}


OOD_KEYS = ("model_accuracy", "predicts_model", "predicts_model_errors", "sum_read_exactly",
            "modulus_read_exactly")


def _inside(accuracy: float, reducer: dict, kept: float, predicts: float) -> dict:
    heads = [{"site": "L0H0", "operands": 0.9, "modulus": 0.1, "%": 0.0, "other": 0.0, "role": "operands"}]
    return {"n_fit": 100, "n_score": 100, "heads": heads,
            "probes": {q: [_rate(0.0), _rate(0.99)] for q in interpret.QUANTITIES},
            "steering": {q: {"resid1": {"linear": {"1": _rate(0.0)}, "interchange": {"1": _rate(0.5)}}}
                         for q in ("sum", "modulus")},
            "ablation": {"L0H0": _rate(0.1)}, "patching": {"resid1": _rate(0.4), "L0H0": _rate(0.2)},
            "explained": {"restricted": _rate(kept * accuracy), "excluded": _rate(0.05),
                          "model": _rate(accuracy), "kept": kept},
            "reducer": reducer,
            "ood": {"layers": {"sum": 1, "modulus": 1}, **{s: {k: _rate(predicts) for k in OOD_KEYS}
                                                           for s in ("test", "negative", "larger")}}}


def test_verdict_g_follows_the_numbers():
    from nanocot.report import _inside_section, inside_verdict

    lacking_sum = {"own": 0.06, "own+modulus": 0.07, "own+sum": 0.85, "sum+modulus": 0.99}
    assert "it lacks the sum" in inside_verdict(_inside(0.06, lacking_sum, 1.0, 0.0), {})
    narrow = {"own": 0.06, "own+modulus": 0.07, "own+sum": 0.3, "sum+modulus": 0.4}
    assert "cannot compute" in inside_verdict(_inside(0.06, narrow, 1.0, 0.0), {})
    full = {"own": 0.99, "own+modulus": 0.99, "own+sum": 0.99, "sum+modulus": 0.99}
    trace = {s: {"consistency": _rate(0.98), "flagged": _rate(1.0)} for s in ("negative", "larger")}
    partly = inside_verdict(_inside(0.99, full, 0.75, 0.05), trace)
    assert "**Partly opened**" in partly
    assert "a trace states its CoT model's answer on negative 98.0%" in partly
    assert "**Opened**" in inside_verdict(_inside(0.99, full, 0.95, 0.9), trace)
    section = "\n".join(_inside_section("large-direct", _inside(0.99, full, 0.75, 0.05)))
    assert "### Inside large-direct" in section and "| sum |" in section
