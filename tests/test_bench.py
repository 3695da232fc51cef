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
