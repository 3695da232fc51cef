"""bench/run.py in --quick mode: runs in-process in seconds and writes every key of bench.json."""

import importlib.util
import json

import pytest
from conftest import ROOT


def _bench():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_quick_bench_writes_the_keys(tmp_path, capsys):
    bench = _bench()
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--threads", "1", "--no-transformers", "--out", str(out),
                "--ckpt-dir", str(tmp_path)])
    r = json.loads(out.read_text())
    assert r["matmul_gflops"] > 0
    for preset in ("small", "large"):
        assert {"tokens_per_s", "gflops", "fraction_of_ceiling"} <= r["train"][preset].keys()
        breakdown = r["train"][preset]["breakdown"]
        assert 0 < breakdown["matmul_share"] < 1 and 0 < breakdown["attention_share"] < 1
        assert breakdown["matmul_gflops"] > 0
        assert {"kv_tokens_per_s", "recompute_tokens_per_s", "speedup"} <= r["sampling"][preset].keys()
        assert (r["sampling"][preset]["speedup_at_trace_length"] > 0
                and r["sampling"][preset]["trace_tokens"] > 0)
        assert r["vs_transformers"][preset]["train_step_ratio"] is None  # skipped, and says so
        assert "skipped" in r["vs_transformers"][preset]["note"]
    assert r["stages"] == {}
    assert "matmul ceiling" in capsys.readouterr().out


def test_bench_times_the_compiled_and_bf16_steps(tmp_path, capsys):
    """--variants: the same step through torch.compile (its compile time apart) and under bf16 autocast."""
    out = tmp_path / "bench.json"
    _bench().main(["--quick", "--threads", "1", "--no-transformers", "--presets", "small",
                   "--variants", "compile,bf16", "--out", str(out)])
    variants = json.loads(out.read_text())["train"]["small"]["variants"]
    assert variants["compile"]["step_ratio"] > 0 and variants["compile"]["compile_seconds"] > 0
    assert variants["bf16"]["step_ratio"] > 0
    assert "small step with compile" in capsys.readouterr().out


@pytest.mark.parametrize("flag", [["--variants", "fp8"], ["--presets", "huge"], ["--device", "tpu"],
                                  ["--repeats", "0"]])
def test_bench_usage_errors_are_one_line(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _bench().parse_args(flag)
    assert exit_info.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def _decisions():
    spec = importlib.util.spec_from_file_location("bench_decisions", ROOT / "bench" / "decisions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("modulus, total", [(10, 10), (12, 11), (29, 28), (29, 40)])
def test_decisions_probe_reads_the_last_steps_reduce_or_not(modulus, total):
    """bench/decisions.py asks the model exactly at the decision: its context is the prompt and the reference
    trace up to the last step's `=t`, and the reference then writes `-` iff t >= m. A stand-in model that
    puts all its mass on `-` exactly there scores 1 on cells that reduce and 0 on cells that do not."""
    import numpy as np
    import torch

    from nanocot.config import TaskConfig
    from nanocot.task import COT, ModularAddition, prompt, reference_trace
    from nanocot.tokenizer import Tokenizer

    decisions, tok, task = _decisions(), Tokenizer(), ModularAddition(TaskConfig())
    problems = decisions.problems_at(task, modulus, total, 5, np.random.default_rng(0))
    assert all(p.modulus == modulus and decisions.last_step_total(p) == total for p in problems)
    full = {prompt(p, COT) + reference_trace(p) for p in problems}

    def oracle(ids):  # the reference's next character as a one-hot over the vocabulary
        text = tok.decode(ids[0].tolist())
        assert text.endswith(f"={total}") and any(f.startswith(text) for f in full), text
        after = next(f for f in full if f.startswith(text))[len(text)]
        logits = torch.full((1, len(ids[0]), len(tok)), -1e9)
        logits[0, -1, tok.encode(after)[0]] = 0.0
        return logits

    assert decisions.reduce_probability(oracle, tok, problems) == float(total >= modulus)
    with pytest.raises(decisions.UsageError):
        decisions.parse_cells("10-10")
