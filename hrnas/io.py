"""Atomic file writes: every checkpoint, arch file, table, figure and result file goes through here.

A file is written to a temporary sibling (same folder, so the rename cannot cross file systems) and
moved onto its final name with ``os.replace``; a crash or an exception leaves the old file intact and
no half-written one behind. The temporary file and folder are created with the modes a plain
``open()`` / ``mkdir()`` gives (0666 / 0777 minus the umask), not ``tempfile``'s private 0600 / 0700:
the figures, checkpoints and tables stay readable to whoever may read the folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch


def _temporary_sibling(path: Path, suffix: str, make: Callable[[Path], None]) -> Path:
    """A new, unused name ``.<name>.<random><suffix>`` next to ``path``, created by ``make``."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            make(tmp)
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused temporary name next to {path}")


def _create_file(tmp: Path) -> None:
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # the umask applies, as for open()


@contextlib.contextmanager
def atomic_path(path, suffix: str = ".tmp", fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    The caller writes the temporary file (by name, e.g. ``fig.savefig(tmp)``). ``suffix`` keeps
    writers that infer the format from the extension happy; ``fsync`` flushes it to disk first
    (checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path, suffix, _create_file)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (no newline translation); returns the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding=encoding, newline="") as fh:
            fh.write(text)
    return Path(path)


def json_default(obj):
    """``json.dumps(default=...)`` for what our logs hold: numpy scalars, tensors, paths, tuples."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path, obj: Any, indent: int | None = 1,
                      default: Callable[[Any], Any] = json_default) -> Path:
    """Write ``obj`` as JSON (plus a final newline) to ``path`` atomically; returns the path."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=default) + "\n")


@contextlib.contextmanager
def atomic_directory(final) -> Iterator[Path]:
    """Yield a temporary sibling folder of ``final``; on success rename it to ``final``.

    A crash (or an exception) leaves no half-written ``final``. Raises FileExistsError if ``final``
    appeared meanwhile and is not empty (the caller decides what that means).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(final, ".tmp", lambda p: p.mkdir(0o777))
    try:
        yield tmp
        try:
            os.rename(tmp, final)  # replaces an empty directory, fails on a non-empty one
        except OSError as e:
            raise FileExistsError(f"{final} exists and is not empty") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
