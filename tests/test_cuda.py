"""The CUDA path computes what the CPU path computes. Skipped where no GPU is present (CI has none); run on a
GPU with `python -m pytest tests/test_cuda.py` (bench/gpu_check.sh does, on the device machine).

Tolerances are float32's: CUDA kernels sum in another order than CPU ones, so results agree to ~1e-5, not
bit for bit. Within one device the KV cache and recomputation must still agree as tightly as on the CPU.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_model

from nanocot import checkpoint
from nanocot.config import STAGE_DEFAULTS, TaskConfig
from nanocot.model import KVCache
from nanocot.rl import Reinforce, RLConfig
from nanocot.sampling import generate
from nanocot.task import ModularAddition
from nanocot.tokenizer import Tokenizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")
ROOT = Path(__file__).resolve().parent.parent
V = 30


def _tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("impl", ["fused", "reference"])
@torch.no_grad()
def test_cuda_logits_equal_cpu_logits(impl):
    model = make_model(V, attn_impl=impl, n_layer=2)
    x = _tokens(3, 40)
    cpu = model(x)
    gpu = model.to(CUDA)(x.to(CUDA)).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-4), (cpu - gpu).abs().max()


@torch.no_grad()
def test_cuda_kv_cache_equals_recomputation():
    model = make_model(V, n_layer=2).to(CUDA)
    x = _tokens(3, 24, seed=1).to(CUDA)
    full = model(x)
    cache = KVCache(model.config, batch_size=3, max_len=24, device=CUDA)
    pieces = [model(x[:, :8], cache)] + [model(x[:, t : t + 1], cache) for t in range(8, 24)]
    assert torch.allclose(torch.cat(pieces, 1), full, atol=1e-5)


def test_cuda_sampling_cache_equals_recompute_and_logprobs_are_the_models():
    model = make_model(6, std=0.4, n_layer=2).to(CUDA)
    prompts = [[2, 3, 4, 5, 2], [3, 4, 2], [5, 5, 5, 4, 3], [2]]

    def sample(use_cache):
        return generate(model, prompts, 12, stop_id=1, generator=torch.Generator(device=CUDA).manual_seed(0),
                        use_cache=use_cache)

    a, b = sample(True), sample(False)
    assert a.tokens.is_cuda and torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            n = int(a.mask[i].sum())
            row = a.tokens[i, :n].tolist()
            logp = F.log_softmax(model(torch.tensor([p + row], device=CUDA)), -1)[0]
            expected = logp[len(p) - 1 : len(p) - 1 + n].gather(
                1, torch.tensor(row, device=CUDA)[:, None]
            ).squeeze(1)
            assert torch.allclose(a.logprobs[i, :n], expected, atol=1e-5)


def test_cuda_reinforce_step_runs_and_moves_the_weights(monkeypatch):
    """A random model never earns the real reward, so reward even-length completions: groups then differ."""
    monkeypatch.setattr("nanocot.rl.reward", lambda problem, text, *a: float(len(text) % 2 == 0))
    task = ModularAddition(TaskConfig())
    model = make_model(len(Tokenizer()), n_layer=1).to(CUDA)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = Reinforce(model, task, RLConfig(prompts_per_step=4, samples_per_prompt=4, max_new_tokens=20,
                                              temperature=1.0, lr=1e-2))
    for _ in range(3):
        trainer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.is_cuda and torch.isfinite(p).all() for p in model.parameters())


def test_cuda_train_sft_checkpoint_loads_on_cpu(tmp_path):
    """A stage run with --device cuda writes a checkpoint whose tensors are on the CPU (loadable
    anywhere)."""
    run = lambda *a: subprocess.run(
        [sys.executable, str(ROOT / "train_sft.py"), "--size", "tiny", "--device", "cuda",
         "--ckpt-dir", str(tmp_path), *a],
        capture_output=True, text=True)
    done = run("--stage", "pretrain", "--steps", "20")
    assert done.returncode == 0, done.stderr
    done = run("--stage", "direct", "--steps", "20", "--eval-every", "10")
    assert done.returncode == 0, done.stderr
    payload = checkpoint.load(tmp_path / "tiny-direct.pt", finished=True)
    assert all(t.device.type == "cpu" for t in payload["state_dict"].values())
    assert payload["step"] == 20 and STAGE_DEFAULTS["direct"].steps > 20


def _task_batches(n: int):
    """n training batches of three padded widths: direct answers (k=2) and CoT traces (k=2, k=4)."""
    import numpy as np

    from nanocot.data import collate, task_example
    from nanocot.fast import cuda_graphs
    from nanocot.task import COT, DIRECT

    tok, task, rng = Tokenizer(), ModularAddition(TaskConfig()), np.random.default_rng(0)
    batches = []
    for i in range(n):
        mode, k = [(DIRECT, 2), (COT, 2), (COT, 4)][i % 3]
        batches.append(collate([task_example(tok, p, mode) for p in task.sample_train(rng, 16, k=k)],
                               tok.pad_id, CUDA))
    assert len({cuda_graphs.pad_batch(b)[0].shape[1] for b in batches}) == 3
    return batches


def test_cuda_graphed_training_steps_equal_eager_steps():
    """GraphedStep (a recorded forward/backward and optimizer step, replayed) trains the weights exactly as
    the kernel-by-kernel step does: same metrics and weights after steps of three widths (each captured on
    its third use), to float32 tolerance."""
    from nanocot.config import TrainConfig
    from nanocot.fast import cuda_graphs
    from nanocot.train import backward, lr_at, make_optimizer

    config = TrainConfig(steps=12, lr=3e-3, warmup_steps=2)
    batches = _task_batches(12)
    runs = []
    for graphed in (False, True):
        model = make_model(len(Tokenizer()), std=0.1).to(CUDA)
        optimizer = make_optimizer(model, config)
        plain_step = lambda parts, model=model, optimizer=optimizer: backward(
            model, optimizer, parts, config.grad_clip)
        step = cuda_graphs.GraphedStep(model, optimizer, plain_step) if graphed else None
        metrics = []
        for i, batch in enumerate(batches):
            # the same padded batch for both: padding's own exactness is tests/test_training.py's; here only
            # the recorded graph vs launching kernel by kernel is compared, so the results must agree to
            # rounding
            parts = [cuda_graphs.pad_batch(batch)]
            if graphed:
                step.set_lr(lr_at(i, config))
                metrics.append(step.backward(parts).tolist())
                step.step()
            else:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(i, config)
                metrics.append(plain_step(parts).tolist())
                optimizer.step()
        runs.append((metrics, [p.detach().clone() for p in model.parameters()], step))
    (m_eager, w_eager, _), (m_graph, w_graph, graphed_step) = runs
    assert len(graphed_step.captured) == 3  # three widths, each replayed on its last uses
    assert torch.allclose(torch.tensor(m_graph), torch.tensor(m_eager), atol=1e-4)
    for a, b in zip(w_graph, w_eager):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


def test_cuda_graphed_decoding_equals_eager_and_logprobs_are_the_models():
    """The graphed decoder (captured on a batch shape's third use) gives eager greedy decoding's tokens, and
    its sampled tokens carry the model's own log-probs and stop at the stop token."""
    from nanocot.fast import cuda_graphs

    model = make_model(6, std=0.4, n_layer=2).to(CUDA)
    prompts = [[2, 3, 4, 5, 2], [3, 4, 2, 2, 3], [5, 5, 5, 4, 3]]
    cuda_graphs.ENABLED = False
    try:
        eager = generate(model, prompts, 12, stop_id=1, greedy=True)
    finally:
        cuda_graphs.ENABLED = True
    for _ in range(3):
        graphed = generate(model, prompts, 12, stop_id=1, greedy=True)
    assert any(key[0] == id(model) for key in cuda_graphs._decoders)
    assert torch.equal(graphed.tokens, eager.tokens) and torch.equal(graphed.mask, eager.mask)
    assert torch.allclose(graphed.logprobs, eager.logprobs, atol=1e-5)
    gen = torch.Generator(device=CUDA).manual_seed(0)
    for _ in range(3):
        sampled = generate(model, prompts, 12, stop_id=1, generator=gen)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            n = int(sampled.mask[i].sum())
            row = sampled.tokens[i, :n].tolist()
            assert 1 not in row[:-1] and (n == sampled.tokens.shape[1] or row[-1] == 1)
            logp = F.log_softmax(model(torch.tensor([p + row], device=CUDA)), -1)[0]
            expected = logp[len(p) - 1 : len(p) - 1 + n].gather(
                1, torch.tensor(row, device=CUDA)[:, None]
            ).squeeze(1)
            assert torch.allclose(sampled.logprobs[i, :n], expected, atol=1e-5)
