"""The parameters cell of a notebook: what it declares, and the strict checks papermill lacks.

papermill injects any value under any name (an unknown name only gets a log warning) and converts
nothing. `check_parameters` adds what a batch needs before anything runs: unknown names are errors,
CLI strings are converted to the annotated type (int, float, bool as true/false/1/0/yes/no, list /
dict as YAML/JSON, ``Optional[T]``), and a comment starting ``a|b|c`` declares the accepted choices.

The cell is read with `ast` + `tokenize` (exact for any valid Python: ``#`` inside strings,
``X | None``, multi-line values, non-literal defaults); papermill's own `inspect_notebook` reads
it only when the cell is not valid Python. `papermill_unseen` lists the names papermill's reader
misses (the notebook contract forbids them: plain ``papermill -p NAME`` would warn "Passed unknown
parameter" and ``--help-notebook`` would omit them).
"""
from __future__ import annotations

import ast
import io
import os
import re
import tokenize
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hrnas.errors import UserError
from hrnas.reproduce.metrics import short
from hrnas.reproduce.notebooks import cell_source, cell_tags, load_nb_json

_CHOICES_RE = re.compile(r"^\s*(?P<c>[\w.+-]+(?:\s*\|\s*[\w.+-]+)+)(?=$|[\s:;,)])")


# ---------------------------------------------------------------------------------------------
# reading the cell
def _parameters_cell(nb: dict, label: str) -> str | None:
    idx = [i for i, c in enumerate(nb["cells"]) if "parameters" in cell_tags(c)]
    if not idx:
        return None
    if len(idx) > 1:
        raise UserError(f"{label}: {len(idx)} cells are tagged 'parameters' (cells "
                        f"{', '.join(map(str, idx))}); papermill uses only the first, keep exactly one")
    return cell_source(nb["cells"][idx[0]])


def _comments_by_line(src: str) -> dict[int, str]:
    out = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                out[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return out


def _read_with_ast(src: str) -> dict | None:
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return None
    comments = _comments_by_line(src)
    params = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, ann = node.target.id, node.annotation
            ann_text = ann.value if isinstance(ann, ast.Constant) and isinstance(ann.value, str) else ast.unparse(ann)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, ann_text = node.targets[0].id, None
        else:
            continue
        try:
            default, literal = ast.literal_eval(node.value), True
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            default, literal = ast.unparse(node.value), False  # not a literal: keep the expression text
        if ann_text is None:
            ann_text = type(default).__name__ if literal and default is not None else "any"
        help_text = comments.get(node.end_lineno) or comments.get(node.lineno) or ""
        params[name] = {"type": ann_text, "default": default, "help": help_text}
    return params


def papermill_parameters(nb_path) -> dict[str, dict]:
    """papermill's `inspect_notebook`: {name: {"name", "inferred_type_name", "default", "help"}}."""
    import papermill as pm

    return pm.inspect_notebook(str(nb_path))


def _read_with_papermill(path: Path) -> dict:
    out = {}
    for name, p in papermill_parameters(path).items():
        try:
            default = ast.literal_eval(p["default"])
        except (ValueError, TypeError, SyntaxError):
            default = p["default"]
        t = p.get("inferred_type_name") or "None"
        out[name] = {"type": t if t != "None" else "any", "default": default, "help": p.get("help", "")}
    return out


def inspect_parameters(nb_path) -> dict[str, dict[str, Any]]:
    """{name: {"type": str, "default": value, "help": str, "choices": tuple | None}} of the cell
    tagged `parameters` (the cell papermill injects after); {} when there is no such cell."""
    path = Path(nb_path)
    src = _parameters_cell(load_nb_json(path), path.stem)
    if src is None:
        return {}
    params = _read_with_ast(src)
    if params is None:
        params = _read_with_papermill(path)
    for p in params.values():
        m = _CHOICES_RE.match(p["help"])
        p["choices"] = tuple(c.strip() for c in m["c"].split("|")) if m else None
    return params


def papermill_unseen(nb_path) -> list[str]:
    """Declared parameters that papermill's `inspect_notebook` does not list (see the contract)."""
    seen = papermill_parameters(nb_path)
    return [n for n in inspect_parameters(nb_path) if n not in seen]


# ---------------------------------------------------------------------------------------------
# types: annotation text -> a small spec -> conversion of a value
_BASE_TYPES = {
    "int": "int", "float": "float", "str": "str", "bool": "bool", "list": "list", "List": "list",
    "Sequence": "list", "tuple": "tuple", "Tuple": "tuple", "dict": "dict", "Dict": "dict",
    "Mapping": "dict", "Path": "str", "PathLike": "str", "PurePath": "str",
}
_NONE_WORDS = ("none", "null", "~")
_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def _type_spec(node) -> tuple:
    if isinstance(node, ast.Constant) and node.value is None:
        return ("none",)
    if isinstance(node, (ast.Name, ast.Attribute)):
        base = node.id if isinstance(node, ast.Name) else node.attr
        if base == "None":
            return ("none",)
        kind = _BASE_TYPES.get(base)
        return (kind, None) if kind in ("list", "tuple") else ((kind,) if kind else ("any",))
    if isinstance(node, ast.Subscript):
        base = node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", "")
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base == "Optional":
            return _union([_type_spec(args[0]), ("none",)])
        if base == "Union":
            return _union([_type_spec(a) for a in args])
        kind = _BASE_TYPES.get(base)
        if kind in ("list", "tuple"):
            elem = [a for a in args if not (isinstance(a, ast.Constant) and a.value is Ellipsis)]
            return (kind, _type_spec(elem[0]) if len(elem) == 1 else None)
        return (kind,) if kind else ("any",)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([_type_spec(node.left), _type_spec(node.right)])
    return ("any",)


def _union(members: list[tuple]) -> tuple:
    flat = []
    for m in members:
        flat.extend(m[1] if m[0] == "union" else [m])
    non_none = [m for m in flat if m[0] != "none"]
    if len(non_none) == 1:
        return ("optional", non_none[0]) if len(flat) > 1 else non_none[0]
    return ("any",)


def parse_type(annotation: str) -> tuple:
    """Annotation text -> a small type spec: ("int",), ("list", elem | None), ("optional", spec), ("any",)…"""
    try:
        return _type_spec(ast.parse(annotation.strip(), mode="eval").body)
    except SyntaxError:
        return ("any",)


class _ConversionError(Exception):
    pass


def _yaml_load(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise _ConversionError from None


def _is_none(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS)


def _to_int(value):
    if isinstance(value, bool):
        raise _ConversionError
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise _ConversionError from None
    if hasattr(value, "__index__"):  # numpy integers
        return int(value.__index__())
    raise _ConversionError


def _to_float(value):
    if isinstance(value, bool):
        raise _ConversionError
    try:
        return float(value.strip() if isinstance(value, str) else value)  # str, int, float, numpy
    except (TypeError, ValueError):
        raise _ConversionError from None


def _to_str(value):
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise _ConversionError


def _to_bool(value):
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _ConversionError


_SCALARS = {"int": _to_int, "float": _to_float, "str": _to_str, "bool": _to_bool}


def convert_value(value, spec: tuple):
    """Convert `value` (a CLI string or a Python object) to the type `spec`; raise _ConversionError."""
    kind = spec[0]
    if kind in ("none", "optional") and _is_none(value):
        return None
    if kind == "none":
        raise _ConversionError
    if kind == "optional":
        return convert_value(value, spec[1])
    if kind in _SCALARS:
        return _SCALARS[kind](value)
    if kind in ("list", "tuple"):
        seq = _yaml_load(value) if isinstance(value, str) else value
        if not isinstance(seq, (list, tuple)):
            raise _ConversionError
        items = [convert_value(v, spec[1]) if spec[1] else v for v in seq]
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        d = _yaml_load(value) if isinstance(value, str) else value
        if not isinstance(d, Mapping):
            raise _ConversionError
        return dict(d)
    return value  # "any": passed through unchecked


def _expected_text(ptype: str, spec: tuple) -> str:
    if spec[0] in ("list", "tuple"):
        return f"{ptype} (YAML/JSON list, e.g. '[1, 2]')"
    if spec[0] == "dict":
        return f"{ptype} (YAML/JSON mapping, e.g. '{{a: 1}}')"
    if spec[0] == "bool" or (spec[0] == "optional" and spec[1][0] == "bool"):
        return f"{ptype} (true/false/1/0/yes/no)"
    return ptype


# ---------------------------------------------------------------------------------------------
# strict checks
def _convert_parameter(label: str, name: str, value, info: dict):
    spec = parse_type(info["type"])
    try:
        converted = convert_value(value, spec)
    except _ConversionError:
        raise UserError(f"{label}: parameter '{name}' expects {_expected_text(info['type'], spec)}, "
                        f"got {short(value)}") from None
    choices = info.get("choices")
    if choices and isinstance(converted, str) and converted not in choices:
        raise UserError(f"{label}: parameter '{name}' = {short(converted)} is not one of {'|'.join(choices)}")
    return converted


def check_against(label: str, declared: dict, params: Mapping) -> dict:
    """`params` checked against `declared` (from `inspect_parameters`); returns converted values."""
    unknown = [n for n in params if n not in declared]
    if unknown:
        raise UserError(f"{label}: unknown parameter '{unknown[0]}'; accepted: "
                        f"{', '.join(sorted(declared)) or '(none: no cell tagged parameters)'}")
    return {n: _convert_parameter(label, n, v, declared[n]) for n, v in params.items()}


def check_parameters(nb_path, params: Mapping | None) -> dict:
    """Strict check of `params` against the notebook's parameters cell; returns converted values.

    Unknown name -> ``UserError("<nb>: unknown parameter 'x'; accepted: a, b, c")``; a value that
    does not convert to the annotated type or is not among the declared choices -> ``UserError``
    naming the parameter, the value and the expected type.
    """
    path = Path(nb_path)
    return check_against(path.stem, inspect_parameters(path), params or {})
