"""Atomic, ``weights_only``-loadable checkpoints and RNG state capture.

A checkpoint is a plain dict: ``format``, ``rng`` (see :func:`get_rng_state`) and the parts given
to :func:`save_checkpoint` — typically ``model``, ``optimizer``, ``scheduler``, ``ema`` (objects
with ``state_dict()`` are converted; DDP is unwrapped), ``step``, ``epoch``, ``arch`` (the
architecture spec), ``config`` and ``search`` state. Everything must be tensors or plain Python
containers/scalars so that ``torch.load(path, weights_only=True)`` reads it (docs/design.md §5;
docs/authors-code.md §3.6 pickles whole models instead).
"""
from __future__ import annotations

import random
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from hrnas.engine.distributed import unwrap_model
from hrnas.errors import UserError
from hrnas.io import atomic_path

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "get_rng_state", "set_rng_state",
           "checkpoint_path", "find_latest"]

FORMAT = "hrnas-checkpoint-1"
_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.device, torch.Size)
_CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")


def get_rng_state() -> dict:
    """RNG states of python ``random``, numpy's global generator, torch CPU and (if present) CUDA,
    as tensors / lists / ints only."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [int(version), [int(x) for x in internal], gauss],
        "numpy": [str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` captured (CUDA only if both sides have it)."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in state["cuda"]])


def _to_plain(obj, where: str):
    """Convert objects with ``state_dict()`` and check that only weights_only-safe types remain."""
    if isinstance(obj, torch.nn.Module):
        obj = unwrap_model(obj).state_dict()
    elif hasattr(obj, "state_dict") and callable(obj.state_dict):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}  # dict subclasses -> dict
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint key {where}[{k!r}] is not a str/int")
            out[k] = _to_plain(v, f"{where}.{k}")
        if hasattr(obj, "_metadata"):  # module state dicts carry version metadata
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size):
        items = [_to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, _PLAIN):
        return obj
    raise TypeError(f"checkpoint part {where} has type {type(obj).__name__}, which "
                    f"torch.load(weights_only=True) cannot read; convert it to plain data")


def save_checkpoint(path, **parts) -> Path:
    """Write ``parts`` (+ ``format`` and the current ``rng`` state) to ``path`` atomically:
    a temporary file in the same folder, fsync, then ``os.replace`` (the old file stays intact if
    anything fails). Returns the path."""
    path = Path(path)
    for reserved in ("format", "rng"):
        if reserved in parts:
            raise ValueError(f"checkpoint part name {reserved!r} is reserved")
    payload = {"format": FORMAT, "rng": get_rng_state()}
    payload.update({k: _to_plain(v, k) for k, v in parts.items()})
    with atomic_path(path, fsync=True) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; a missing, corrupt or foreign file raises
    :class:`UserError` naming it. RNG states are NOT restored here: call
    ``set_rng_state(ckpt["rng"])`` when resuming."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint file not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError / UnpicklingError / EOFError / zip errors
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint file {path} is corrupt or unreadable: {reason[:200]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"checkpoint file {path} is not an hrnas checkpoint (format {FORMAT})")
    return ckpt


def checkpoint_path(run_dir, step: int) -> Path:
    """``RUN_DIR/ckpt_<step, 9 digits>.pt`` — the name :func:`find_latest` looks for."""
    return Path(run_dir) / f"ckpt_{int(step):09d}.pt"


def find_latest(run_dir) -> Path | None:
    """The checkpoint with the highest step in ``run_dir`` (``None`` if there is none)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in run_dir.iterdir()
             if (m := _CKPT_RE.match(p.name)) and p.is_file()]
    return max(found)[1] if found else None
