"""Shared fixtures: the repository root, one CPU thread, tiny models and a tiny checkpoint.

One torch thread: the tiny models are far too small to gain from intra-op parallelism, and on a shared
2-core machine oversubscribed threads made a training step ~30x slower.
"""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nanocot.config import CorpusConfig, TaskConfig, TrainConfig, model_config
from nanocot.model import GPT
from nanocot.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tok() -> Tokenizer:
    return Tokenizer()


def make_model(vocab_size: int, seed: int = 0, std: float = 0.5, **overrides) -> GPT:
    """A tiny GPT whose weights are re-drawn with a large std, so attention patterns are sharp and far from
    uniform: with the default init (std 0.02) every attention row is nearly uniform and a wrong causal mask
    or a broken cache could hide inside the tolerance."""
    torch.manual_seed(seed)
    model = GPT(replace(model_config("tiny", vocab_size), **overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_" not in name:
                p.normal_(0.0, std)
    return model.eval()


def cli_exit_code(main, argv: list[str]) -> int:
    """Run a script's `main(argv)` the way its `python script.py` does (through run_cli); return the exit
    code (0 if it returns). In-process, so each bad-input case costs no interpreter start-up."""
    from nanocot.cli import run_cli

    try:
        run_cli(lambda: main(argv))
    except SystemExit as e:
        return e.code
    return 0


@pytest.fixture(scope="session")
def tiny_pretrain_payload() -> dict:
    """A real (2-step) tiny pretraining payload, as train_sft.py would save it."""
    from nanocot.sft import pretrain

    cfg = TrainConfig(steps=2, batch_size=4, warmup_steps=1, eval_every=0)
    return pretrain("tiny", cfg, TaskConfig(), CorpusConfig(num_lines=300), "cpu")
