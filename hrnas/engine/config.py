"""Recipes: ``hrnas/configs/defaults.yaml`` + ``hrnas/configs/<task>.yaml`` presets + overrides.

Resolution (later wins): defaults.yaml <- the task's ``paper`` section <- the task's ``<preset>``
section (``tiny``/``smoke``, or a preset of that task only, such as imagenet's ``paper-retrain``;
``paper`` itself adds nothing) <- ``key=value`` overrides. The presets of a task are the sections of
its file (``presets_of``): ``paper``, ``tiny`` and ``smoke`` in every task, any other section only
where it is declared. A task's ``paper`` section may ADD keys under ``data``, ``model``, ``loss`` and
``eval`` (task-specific settings); every other key, in the presets and in overrides, must already
exist and keep its type. Switches where the paper and the authors' code disagree are documented in docs/switches.md
(docs/authors-code.md §4, §8).
"""
from __future__ import annotations

import copy
import fnmatch
import re
from importlib import resources

import yaml

from hrnas import PRESETS, TASKS
from hrnas.engine.optim import DECAY_MODES, OPTIMIZERS
from hrnas.errors import UserError, check_choice
from hrnas.models.anchor_head import NMS_KINDS
from hrnas.models.searching_block import ATTENTION_TYPES, FAST_PATHS, PLACEMENTS, SE_POSITIONS
from hrnas.models.transformer import TOKEN_MODES

__all__ = ["PRESETS", "presets_of", "load_config", "parse_override", "flatten", "resolve_rho"]

_EXTENSIBLE = ("data", "model", "loss", "eval")

# Allowed values of the named switches and enumerations (checked for files and overrides); where a module
# owns the list, its constant is used. The search's own switches are listed here (search/ reads them).
CHOICES = {
    "model.act": ("relu", "swish"),
    "model.attention": ATTENTION_TYPES,
    "model.placement": PLACEMENTS,
    "model.se_on": SE_POSITIONS,
    "model.se_placement": PLACEMENTS,
    "model.token_mode": TOKEN_MODES,
    "optim.name": OPTIMIZERS,
    "optim.decay_mode": DECAY_MODES,
    "sched.name": ("onecycle", "exp_decay", "multistep", "cosine", "constant"),
    "search.variant": ("A", "B"),
    "search.lambda_source": ("paper", "code"),
    "search.cost_size": (224, "task"),
    "search.removable_size": ("cost", "task"),
    "search.token_cost": ("hrnas", "true"),
    "search.export": ("best_val", "final"),
    "train.amp": ("none", "fp16", "bf16"),
    "train.fast_paths": FAST_PATHS,
    "eval.mode": ("whole", "slide"),
    "eval.nms": NMS_KINDS,
}
# Types of keys whose default is null (glob patterns allowed).
NULLABLE = {
    "data.root": str,
    "data.randaugment": list,
    "model.se_ratio": float,
    "model.attention_branches": list,
    "train.max_steps": int,
    "train.grad_clip": float,
    "sched.warmup_lr": float,
    "search.rho": float,
    "search.rho_table.*": float,
    "search.budget_macs": float,
    "search.budget_ratio": float,
    "search.budget_size": list,
}


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.1 needs ``1.0e-4``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _yaml(text: str, where: str):
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise UserError(f"{where}: invalid YAML ({' '.join(str(exc).split())[:160]})") from None


def _read(name: str) -> dict:
    text = resources.files("hrnas.configs").joinpath(name).read_text(encoding="utf-8")
    data = _yaml(text, f"hrnas/configs/{name}")
    if not isinstance(data, dict):
        raise UserError(f"hrnas/configs/{name}: expected a mapping at the top level")
    return data


def flatten(d: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are leaves)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _type_name(t) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list"}.get(t, t.__name__)


def _nullable_type(key: str):
    for pattern, t in NULLABLE.items():
        if fnmatch.fnmatchcase(key, pattern):
            return t
    return None


def _check_scalar(key: str, value, expect: type, source: str):
    ok = (isinstance(value, bool) if expect is bool else
          isinstance(value, int) and not isinstance(value, bool) if expect is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if expect is float else
          isinstance(value, expect))
    if not ok:
        raise UserError(f"{source}: {key}={value!r} has the wrong type; expected {_type_name(expect)}")
    return float(value) if expect is float else value


def _coerce(key: str, value, default, source: str):
    """Check ``value`` against the existing ``default`` of ``key``; return the value to store."""
    if key in CHOICES:
        check_choice(f"{source}: {key}", value, CHOICES[key])
        return value
    if default is None:
        expect = _nullable_type(key)
        if value is None or expect is None:
            return value
        return _check_scalar(key, value, expect, source)
    if value is None:
        if _nullable_type(key) is not None:
            return None
        raise UserError(f"{source}: {key} cannot be null; expected {_type_name(type(default))}")
    if isinstance(default, list):
        if not isinstance(value, list):
            raise UserError(f"{source}: {key}={value!r} has the wrong type; expected a list "
                            f"like {default}")
        if default:
            return [_check_scalar(f"{key}[{i}]", v, type(default[0]), source)
                    for i, v in enumerate(value)]
        return value
    return _check_scalar(key, value, type(default), source)


def _set(cfg: dict, key: str, value, source: str, *, allow_new: bool = False) -> None:
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None and allow_new:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise _unknown(cfg, key, source)
        node = child
    leaf = parts[-1]
    if leaf not in node:
        if not allow_new:
            raise _unknown(cfg, key, source)
        node[leaf] = value
        return
    if isinstance(node[leaf], dict) and node[leaf]:
        sub = ", ".join(sorted(flatten(node[leaf], key + ".")))
        raise UserError(f"{source}: {key} is a section, set one of its keys: {sub}")
    node[leaf] = _coerce(key, value, node[leaf], source)


def _unknown(cfg: dict, key: str, source: str) -> UserError:
    section = key.split(".")[0]
    keys = sorted(flatten(cfg[section], section + ".")) if isinstance(cfg.get(section), dict) \
        else sorted(k for k, v in cfg.items() if isinstance(v, dict))
    return UserError(f"{source}: unknown key {key!r}; accepted: {', '.join(keys)}")


def parse_override(text: str) -> tuple[str, object]:
    """``"optim.lr=0.01"`` -> ``("optim.lr", 0.01)``; the value is parsed as YAML."""
    if "=" not in text:
        raise UserError(f"override {text!r} is not of the form key=value (e.g. optim.lr=0.01)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise UserError(f"override {text!r} has an empty key")
    return key, _yaml(raw, f"override {key}")


def resolve_rho(cfg: dict) -> float | None:
    """The λ of the L1 penalty: ``search.rho`` if set, else ``rho_table[lambda_source][variant]``."""
    s = cfg["search"]
    if s["rho"] is not None:
        return s["rho"]
    rho = s["rho_table"][s["lambda_source"]][s["variant"]]
    if rho is None:
        raise UserError(f"search.lambda_source={s['lambda_source']} has no λ for variant "
                        f"{s['variant']} of task {cfg.get('task')}; set search.rho or use "
                        f"search.lambda_source=paper")
    return rho


def presets_of(task: str) -> tuple[str, ...]:
    """The presets of ``task``: the common ones, then the sections its file adds (in file order)."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; accepted: {', '.join(TASKS)}")
    return PRESETS + tuple(name for name in _read(f"{task}.yaml") if name not in PRESETS)


def load_config(task: str, preset: str = "tiny", overrides=()) -> dict:
    """The nested recipe dict of ``task`` / ``preset`` with ``key=value`` overrides applied.

    ``cfg["task"]`` and ``cfg["preset"]`` name the recipe; ``search.rho`` is resolved from the λ
    table when null and the search is enabled. Unknown keys, wrong types and values outside a
    switch's choices raise :class:`UserError` naming the key.
    """
    presets = presets_of(task)
    if preset not in presets:
        raise UserError(f"unknown preset {preset!r}; accepted: {', '.join(presets)} (the presets of {task})")
    cfg = copy.deepcopy(_read("defaults.yaml"))
    recipes = _read(f"{task}.yaml")
    for name in ("paper",) + ((preset,) if preset != "paper" else ()):
        section = recipes.get(name) or {}
        if not isinstance(section, dict):
            raise UserError(f"hrnas/configs/{task}.yaml: preset {name!r} must be a mapping")
        source = f"hrnas/configs/{task}.yaml [{name}]"
        for key, value in flatten(section).items():
            _set(cfg, key, value, source,
                 allow_new=name == "paper" and key.split(".")[0] in _EXTENSIBLE)
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, key, value, "override")
    if cfg["search"]["enabled"]:
        cfg["search"]["rho"] = resolve_rho({**cfg, "task": task})
    cfg["task"], cfg["preset"] = task, preset
    return cfg
