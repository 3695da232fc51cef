"""nanocot's benchmark: how close training and sampling come to this machine's limits, and to transformers.

    python bench/run.py                       # every measurement, table on stdout, bench.json in cwd
    python bench/run.py --threads 2 --out bench/bench.json --ckpt-dir out

- The ceiling is fp32 `torch.matmul` of large square matrices at the same thread count: a model cannot do
  its FLOPs faster than that, so `train.<preset>.fraction_of_ceiling` says how much time goes elsewhere
  (per-op overhead, memory traffic, the optimizer).
- Training FLOPs are 6 * params * tokens plus attention (GPT.flops_per_token); one step is exactly the
  training loop's: masked loss, backward, clip, AdamW.
  `train.<preset>.breakdown` (CPU) profiles that step once: the matmuls' share of its time and their GFLOP/s
  at the model's shapes, and attention's share: what bounds the fraction of the ceiling at d_model 64.
- Sampling runs at the RL batch (prompts_per_step * samples_per_prompt) and length (max_new_tokens, capped by
  the context), never stopping early, with the KV cache and with prefix recomputation (the whole prefix
  through the blocks, the unembedding at the last position only: the cache saves the rest); and again at the
  length of a reference trace (`speedup_at_trace_length`, `trace_tokens`), which is what a trained policy
  writes.
- `--variants compile,bf16` also times the training step through `torch.compile` and under bf16 autocast
  (`train.<preset>.variants`): on this project's 2-core CPU neither is faster (docs/LOG.md, 2026-11-27).
- transformers' GPT2LMHeadModel with the same layers, heads, width, MLP width, vocabulary and context is
  the outside yardstick (an optional bench-only dependency: `pip install -e .[bench]`); without it the
  ratios are null and the reason is recorded.
- Every time is the median of --repeats runs after a warm-up run.
"""

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from nanocot import checkpoint, fast
from nanocot.cli import Parser, first_paragraph, positive_int
from nanocot.config import MODEL_PRESETS, SIZES, STAGE_DEFAULTS, TaskConfig, model_config
from nanocot.fast import cpu as fast_cpu
from nanocot.model import GPT
from nanocot.rl import RLConfig
from nanocot.sampling import generate
from nanocot.task import COT, ModularAddition, completion, prompt
from nanocot.tokenizer import Tokenizer
from nanocot.train import fused_adam, make_optimizer, masked_loss

NEVER = -1  # a stop id no token has: every row samples its whole budget


DEVICE = torch.device("cpu")  # set by main(); GPU work is asynchronous, so every timing synchronises


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of fn() over `repeats` runs, after one warm-up run (allocator, caches, lazy init)."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(n: int, repeats: int) -> float:
    """fp32 (no TF32 on CUDA: torch's default for matmul) square products, 10 per timing on a GPU."""
    a, b = torch.randn(n, n, device=DEVICE), torch.randn(n, n, device=DEVICE)
    times = 10 if DEVICE.type == "cuda" else 1

    def run():
        for _ in range(times):
            a @ b

    return times * 2 * n**3 / median_seconds(run, repeats) / 1e9


def train_batch(config, batch_size: int, generator: torch.Generator):
    x = torch.randint(1, config.vocab_size, (batch_size, config.block_size), generator=generator)
    y = torch.randint(1, config.vocab_size, (batch_size, config.block_size), generator=generator)
    return x.to(DEVICE), y.to(DEVICE), torch.ones(batch_size, config.block_size, device=DEVICE)


def nanocot_train_step(model: GPT, batch, steps: int, forward: torch.nn.Module | None = None,
                       bf16: bool = False):
    """`steps` steps of exactly the training loop's work (nanocot/train.py). The variants: `forward` runs the
    model inside the loss in its place (a torch.compile wrapper sharing its weights); `bf16` runs the forward
    and the loss under bf16 autocast."""
    optimizer = make_optimizer(model, STAGE_DEFAULTS["pretrain"])
    forward = model if forward is None else forward
    loss_fn = fast_cpu.masked_loss if fast.on_cpu(DEVICE) else masked_loss  # as the loop picks it

    def run():
        for _ in range(steps):
            with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=bf16):
                loss, _ = loss_fn(forward, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()

    return run


VARIANTS = ("compile", "bf16")


def train_variants(config, batch, steps: int, repeats: int, eager_seconds: float, names: list[str]) -> dict:
    """The same training step compiled (`torch.compile`, inductor) or under bf16 autocast, as time / the eager
    fp32 step's time: the two speed levers PyTorch offers beyond eager kernels. Measured, not used by the
    training scripts (docs/LOG.md has why). A compiled step's first call compiles the forward and backward:
    its extra time is `compile_seconds` (inductor's on-disk cache shortens a rerun's)."""
    out = {}
    for name in names:
        torch.manual_seed(0)
        model = GPT(config).to(DEVICE)
        if name == "compile":
            run = nanocot_train_step(model, batch, steps, forward=torch.compile(model))
            synchronize()
            start = time.perf_counter()
            run()  # compiles
            synchronize()
            first = time.perf_counter() - start
            seconds = median_seconds(run, repeats)
            out[name] = {"step_ratio": seconds / eager_seconds, "compile_seconds": first - seconds}
        else:
            seconds = median_seconds(nanocot_train_step(model, batch, steps, bf16=True), repeats)
            out[name] = {"step_ratio": seconds / eager_seconds}
    return out


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def step_breakdown(run) -> dict:
    """Where one run of the training step spends its time (torch.profiler, CPU only: on a GPU the host's times
    are launch times). The matmul kernels' share of the step and their GFLOP/s at the model's own shapes tell
    what `fraction_of_ceiling` can reach: with every other op free, it would be fraction / matmul_share, and
    those matmuls (K = d_model = 64) run below the square-matrix ceiling. Profiling adds per-op overhead, so
    the shares are indicative; the timed numbers above are measured without it."""
    from torch.profiler import profile

    with profile(with_flops=True) as prof:
        run()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)  # microseconds, every op once (self times)
    matmuls = [e for e in events if e.key in MATMULS]
    matmul_time = sum(e.self_cpu_time_total for e in matmuls)
    attention_time = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key)
    return {"matmul_share": matmul_time / total,
            "matmul_gflops": sum(e.flops for e in matmuls) / matmul_time / 1e3,
            "attention_share": attention_time / total}


def rl_prompts(tok: Tokenizer, n: int) -> tuple[list[list[int]], int]:
    """n real CoT prompts of one length (k = the task's operand count), as RL samples them, and the median
    token length of their reference completions (trace, answer, newline): what a trained policy writes."""
    task = ModularAddition(TaskConfig())
    problems = task.sample_train(np.random.default_rng(0), 4 * n, k=task.config.num_operands)
    prompts = [tok.encode(prompt(p, COT)) for p in problems]
    length = max(set(map(len, prompts)), key=[len(p) for p in prompts].count)
    chosen = [i for i, p in enumerate(prompts) if len(p) == length][:n]
    trace_tokens = int(np.median([len(tok.encode(completion(problems[i], COT))) for i in chosen]))
    return [prompts[i] for i in chosen], trace_tokens


def sampling_seconds(model: GPT, prompts: list[list[int]], budget: int, repeats: int) -> dict:
    """Median seconds to sample `budget` tokens for every prompt, with the KV cache and by recomputation."""
    generator = torch.Generator(device=DEVICE).manual_seed(0)
    return {use_cache: median_seconds(lambda c=use_cache: generate(model, prompts, budget, NEVER,
                                                                 generator=generator, use_cache=c), repeats)
            for use_cache in (True, False)}


def bench_sampling(model: GPT, prompts: list[list[int]], budget: int, trace_tokens: int,
                   repeats: int) -> dict:
    """At the RL budget (`speedup`, the headline), and at a reference trace's length, where the cache has
    fewer positions to save (recomputation costs grow with the square of the length, the cache's linearly)."""
    new_tokens = min(budget, model.config.block_size - len(prompts[0]))
    seconds = sampling_seconds(model, prompts, budget, repeats)
    out = {"kv_tokens_per_s": len(prompts) * new_tokens / seconds[True], "kv_seconds": seconds[True],
           "recompute_tokens_per_s": len(prompts) * new_tokens / seconds[False],
           "recompute_seconds": seconds[False], "speedup": seconds[False] / seconds[True]}
    at_trace = sampling_seconds(model, prompts, trace_tokens, repeats)
    out.update(batch=len(prompts), new_tokens=new_tokens, prompt_tokens=len(prompts[0]),
               trace_tokens=trace_tokens, speedup_at_trace_length=at_trace[False] / at_trace[True])
    return out


def bench_transformers(config, batch, prompts: list[list[int]], budget: int, steps: int, repeats: int,
                       train_s: float, kv_s: float) -> dict:
    """The same step and generation by transformers' GPT-2 at our config; ratios are nanocot /
    transformers."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.d_model,
                           n_layer=config.n_layer, n_head=config.n_head, n_inner=config.d_mlp,
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
                           bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(hf_config).to(DEVICE).train()
    # the same optimizer as nanocot's step (fused AdamW where torch has it), so the ratio compares the models
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), fused=fused_adam(model))
    x, y, _ = batch

    def train_run():
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(model(input_ids=x).logits.flatten(0, 1), y.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()

    hf_train = median_seconds(train_run, repeats)
    model.eval()
    ids = torch.tensor(prompts, device=DEVICE)
    new = min(budget, config.block_size - ids.shape[1])

    @torch.no_grad()
    def generate_run():
        model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=new,
                       min_new_tokens=new, pad_token_id=0, use_cache=True)

    hf_generate = median_seconds(generate_run, repeats)
    return {"train_step_ratio": train_s / hf_train, "generate_ratio": kv_s / hf_generate,
            "transformers_train_seconds": hf_train, "transformers_generate_seconds": hf_generate}


def stage_seconds(folder: Path) -> dict:
    """Wall time of each finished stage of the default pipeline, from the checkpoints' training records."""
    out = {}
    for path in sorted(folder.glob("*.pt")):
        try:
            payload = checkpoint.load(path, finished=True)
        except checkpoint.CheckpointError as e:
            out[path.stem] = {"error": str(e)}
            continue
        last = payload["history"][-1]
        out[path.stem] = {"seconds": last["seconds"], "steps": last["steps"], "flops": last["flops"]}
    return out


def parse_args(argv=None):
    p = Parser(description=first_paragraph(__doc__))
    p.add_argument("--out", default="bench.json", help="where to write the JSON (default: bench.json in cwd)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="timed runs per measurement; the median is kept (default: 3)")
    p.add_argument("--presets", default="small,large",
                   help="comma-separated model presets (default: small,large)")
    p.add_argument("--ckpt-dir", help="read per-stage wall times from the checkpoints in this folder")
    p.add_argument("--no-transformers", action="store_true", help="skip the transformers comparison")
    p.add_argument("--variants", default="", help="comma-separated training-step variants to time against "
                   f"the eager step: {', '.join(VARIANTS)} (default: none; compiling takes ~25 s per preset "
                   "on a CPU)")
    p.add_argument("--quick", action="store_true",
                   help="small sizes and one repeat: a smoke test, not a measurement")
    args = p.parse_args(argv)
    # a usage mistake is one line and exit code 2 (Parser.error), never a traceback
    if args.device not in ("cpu", "cuda") or (args.device == "cuda" and not torch.cuda.is_available()):
        p.error(f"device {args.device!r} is not available here: use cpu or cuda")
    args.presets, args.variants = ([s for s in args.presets.split(",") if s],
                                   [v for v in args.variants.split(",") if v])
    if unknown := [s for s in args.presets if s not in MODEL_PRESETS]:
        p.error(f"unknown preset(s) {unknown}: choose from {', '.join(SIZES)}")
    if unknown := [v for v in args.variants if v not in VARIANTS]:
        p.error(f"unknown variant(s) {unknown}: choose from {', '.join(VARIANTS)}")
    return args


def main(argv=None) -> dict:
    global DEVICE
    args = parse_args(argv)
    DEVICE = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    rl = RLConfig()
    batch_n, budget, steps = ((8, 8, 2) if args.quick
                              else (rl.prompts_per_step * rl.samples_per_prompt, rl.max_new_tokens, 10))
    tok = Tokenizer()
    prompts, trace_tokens = rl_prompts(tok, batch_n)
    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu"
    result = {"device": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "quick": args.quick, "repeats": repeats,
              "matmul_gflops": matmul_gflops(256 if args.quick else 2048, repeats),
              "train": {}, "sampling": {}, "vs_transformers": {}, "stages": None}
    result["transformers"] = None  # its version when the comparison runs
    skip = "skipped (--no-transformers)" if args.no_transformers else None
    if skip is None:
        try:
            import transformers

            result["transformers"] = transformers.__version__
        except ImportError:
            skip = "skipped: transformers is not installed (pip install -e .[bench])"
    for size in args.presets:
        config = model_config(size, len(tok))
        torch.manual_seed(0)
        model = GPT(config).to(DEVICE)
        batch_size = 4 if args.quick else STAGE_DEFAULTS["pretrain"].batch_size
        batch = train_batch(config, batch_size, torch.Generator().manual_seed(0))
        train_run = nanocot_train_step(model, batch, steps)
        train_s = median_seconds(train_run, repeats)
        tokens_per_s = steps * batch_size * config.block_size / train_s
        gflops = tokens_per_s * model.flops_per_token(config.block_size) / 1e9
        result["train"][size] = {"params": model.num_params(), "batch": batch_size,
                                 "seq_len": config.block_size, "tokens_per_s": tokens_per_s, "gflops": gflops,
                                 "fraction_of_ceiling": gflops / result["matmul_gflops"],
                                 "step_seconds": train_s / steps,
                                 "breakdown": step_breakdown(train_run) if DEVICE.type == "cpu" else None,
                                 "variants": train_variants(config, batch, steps, repeats, train_s,
                                                            args.variants)}
        model.eval()
        result["sampling"][size] = bench_sampling(model, prompts, budget, trace_tokens, repeats)
        if skip:
            result["vs_transformers"][size] = {"train_step_ratio": None, "generate_ratio": None, "note": skip}
        else:
            result["vs_transformers"][size] = bench_transformers(
                config, batch, prompts, budget, steps, repeats, train_s,
                result["sampling"][size]["kv_seconds"])
    if args.ckpt_dir:
        result["stages"] = stage_seconds(Path(args.ckpt_dir))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {args.out}")
    return result


def print_table(r: dict) -> None:
    print(f"fp32 matmul ceiling: {r['matmul_gflops']:.1f} GFLOP/s on {r['device']} ({r['threads']} threads, "
          f"torch {r['torch']})")
    print(f"{'preset':8} {'params':>8} {'train tok/s':>12} {'GFLOP/s':>8} {'of ceil':>8} {'kv tok/s':>10} "
          f"{'recomp tok/s':>12} {'kv x':>6} {'train/HF':>9} {'gen/HF':>7}")
    for size, t in r["train"].items():
        s, h = r["sampling"][size], r["vs_transformers"][size]
        ratio = lambda v: f"{v:.2f}" if v is not None else "n/a"
        print(f"{size:8} {t['params']:>8,} {t['tokens_per_s']:>12,.0f} {t['gflops']:>8.2f} "
              f"{t['fraction_of_ceiling']:>8.1%} {s['kv_tokens_per_s']:>10,.0f} "
              f"{s['recompute_tokens_per_s']:>12,.0f} {s['speedup']:>6.1f} {ratio(h['train_step_ratio']):>9} "
              f"{ratio(h['generate_ratio']):>7}")
    for size, s in r["sampling"].items():
        print(f"  {size} sampling: the KV cache {s['speedup']:.1f}x faster at {s['new_tokens']} new tokens "
              f"(the RL budget), {s['speedup_at_trace_length']:.1f}x at a reference trace's "
              f"{s['trace_tokens']}")
    for size, t in r["train"].items():
        if t.get("breakdown"):
            b = t["breakdown"]
            print(f"  {size} step (profiled): matmuls {b['matmul_share']:.0%} of the time at "
                  f"{b['matmul_gflops']:.0f} GFLOP/s ({b['matmul_gflops'] / r['matmul_gflops']:.0%} of the "
                  f"ceiling), attention {b['attention_share']:.0%}; with every other op free: "
                  f"{t['fraction_of_ceiling'] / b['matmul_share']:.0%} of the ceiling")
    for size, t in r["train"].items():
        for name, v in t.get("variants", {}).items():
            extra = f" after a {v['compile_seconds']:.0f} s compile" if "compile_seconds" in v else ""
            print(f"  {size} step with {name}: {v['step_ratio']:.2f}x the eager fp32 step's time{extra}")
    if r["stages"]:
        for name, stage in r["stages"].items():
            print(f"  stage {name}: " + (f"{stage['seconds']:.1f} s, {stage['steps']} steps"
                                         if "seconds" in stage else stage["error"]))


if __name__ == "__main__":
    main()
