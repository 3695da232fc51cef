"""Checkpoints: one file per trained model, written atomically, loaded without unpickling code.

- Holds weights, the model/task/corpus/training configs as plain dicts, the vocabulary, the stage's
  record (curves, tokens, seconds, FLOPs) and the records of the stages before it.
- Written to a temporary file in the same folder, flushed and fsynced, then renamed over the target: a
  crash leaves the old checkpoint or the new one, never half of one.
- Loaded with `torch.load(weights_only=True)`, which refuses pickled code; every failure becomes a
  `CheckpointError` whose message names the file and the problem.
"""

import os
import pickle
import tempfile
from pathlib import Path

import torch

FORMAT = "nanocot-1"


class CheckpointError(ValueError):
    pass


def save(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path, expect: dict | None = None) -> dict:
    """Load a checkpoint; `expect` maps top-level keys to required values (e.g. {"size": "small"})."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() and "unsupported" in str(e).lower():
            raise CheckpointError(f"checkpoint {path} holds pickled objects other than tensors and plain data "
                                  "(possibly code); refusing to load it") from None
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt") from None
    except Exception as e:  # torch's legacy loader raises KeyError, struct.error, ... on junk bytes
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt ({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a nanocot checkpoint (format {FORMAT})")
    for key, want in (expect or {}).items():
        if payload.get(key) != want:
            raise CheckpointError(f"checkpoint {path} has {key}={payload.get(key)!r}, expected {want!r}")
    return payload
