"""bench/run.py in --quick mode: runs in-process in seconds and writes every key issue 6 asks for."""

import importlib.util
import json

from conftest import ROOT


def test_quick_bench_writes_the_keys(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--threads", "1", "--no-transformers", "--out", str(out), "--ckpt-dir", str(tmp_path)])
    r = json.loads(out.read_text())
    assert r["matmul_gflops"] > 0
    for preset in ("small", "large"):
        assert {"tokens_per_s", "gflops", "fraction_of_ceiling"} <= r["train"][preset].keys()
        breakdown = r["train"][preset]["breakdown"]
        assert 0 < breakdown["matmul_share"] < 1 and 0 < breakdown["attention_share"] < 1
        assert breakdown["matmul_gflops"] > 0
        assert {"kv_tokens_per_s", "recompute_tokens_per_s", "speedup"} <= r["sampling"][preset].keys()
        assert r["sampling"][preset]["speedup_at_trace_length"] > 0 and r["sampling"][preset]["trace_tokens"] > 0
        assert r["vs_transformers"][preset]["train_step_ratio"] is None  # skipped, and says so
        assert "skipped" in r["vs_transformers"][preset]["note"]
    assert r["stages"] == {}
    assert "matmul ceiling" in capsys.readouterr().out
