"""The metrics contract between a notebook and the batch runner.

A notebook calls ``record_metrics(out_dir, "NN_name", {...})``; the runner reads the record back with
`read_metrics` after the run and shows the key metrics in its summary table.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

from hrnas.errors import UserError
from hrnas.io import atomic_write_text

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_MAX_KEY_METRICS = 4


def now() -> str:
    """Local time, ISO 8601 with the offset, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def short(value, limit: int = 60) -> str:
    """``repr(value)``, cut to `limit` characters (for one-line error messages)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def jsonable(value, where: str):
    """Plain JSON types only: numpy/torch scalars and arrays via .item()/.tolist(), Path -> str,
    non-finite floats -> "nan"/"inf"/"-inf" (kept valid JSON)."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise UserError(f"{where}: key {short(k)} is not a string")
            out[k] = jsonable(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    for attr in ("item", "tolist"):  # numpy scalars/arrays, torch tensors
        fn = getattr(value, attr, None)
        if callable(fn):
            try:
                return jsonable(fn(), where)
            except (TypeError, ValueError, RuntimeError):
                continue
    raise UserError(f"{where}: value of type {type(value).__name__} is not JSON-serialisable")


def write_json(path: Path, data) -> Path:
    """Strict JSON (no NaN), indented, written atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def check_name(name, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UserError(f"{what}: {short(name)} is not a valid notebook name (letters, digits, _ . + -)")
    return name


def metrics_path(out_dir, name: str) -> Path:
    return Path(out_dir) / f"{check_name(name, 'name')}.metrics.json"


def record_metrics(out_dir, name: str, metrics: Mapping, *, key=None, merge: bool = True) -> Path:
    """Record a notebook's metrics in ``<out_dir>/<name>.metrics.json`` (atomic write).

    `metrics`: a mapping of JSON-able values (numbers, strings, lists, nested dicts; numpy/torch
    scalars are converted). Repeated calls merge into the file (``merge=False`` replaces it).
    `key`: names of the metrics to show in the batch summary table (default: the first few
    numeric ones). Returns the path written.
    """
    path = metrics_path(out_dir, name)
    if not isinstance(metrics, Mapping):
        raise UserError(f"record_metrics: metrics must be a mapping, got {type(metrics).__name__}")
    new = jsonable(metrics, "metrics")
    record = {"notebook": name, "metrics": {}, "key": []}
    if merge and path.exists():
        old = read_metrics(out_dir, name)
        record["metrics"].update(old.get("metrics", {}))
        record["key"] = list(old.get("key", []))
    record["metrics"].update(new)
    if key is not None:
        keys = [key] if isinstance(key, str) else list(key)
        missing = [k for k in keys if k not in record["metrics"]]
        if missing:
            raise UserError(f"record_metrics: key {missing[0]!r} is not among the metrics "
                            f"({', '.join(record['metrics'])})")
        record["key"] = keys
    record["updated"] = now()
    return write_json(path, record)


def read_metrics(out_dir, name: str) -> dict:
    """The record written by `record_metrics` ({"notebook", "metrics", "key", "updated"}), or {}."""
    path = metrics_path(out_dir, name)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable metrics file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise UserError(f"{path}: not a metrics record (expected an object with a 'metrics' object)")
    return data


def key_metrics(metrics: dict, key: list) -> dict:
    """The metrics named in `key`, else the first few numeric ones."""
    if key:
        return {k: metrics[k] for k in key if k in metrics}
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = v
            if len(out) == _MAX_KEY_METRICS:
                break
    return out


def fmt_metric(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
