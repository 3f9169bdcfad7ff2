"""Build the super network (or a searched network) for a task, and its architecture spec (JSON).

The architecture spec is what the search exports and ``hrnas train --arch`` retrains::

    {"format": "hrnas-arch", "version": 1, "task": "cityscapes",
     "model": {...build options...},
     "blocks": [{"name": "fuse0.0_0", "inp": 24, "oup": 24, "stride": 1,
                 "kernels": [3, 5, 7], "hidden": [96, 96, 96], "tokens": 64}, ...]}

``build_model(task, arch=spec)`` and ``spec_of(model)`` round-trip exactly. A spec is validated against
the task's super network: same block names, widths and strides; kernels from {3, 5, 7}; non-negative widths.

Shipped architectures (``hrnas/configs/archs/<name>.json``) are found by name wherever a spec file is
expected (``load_arch("hrnas-a-imagenet")``, ``hrnas train imagenet --arch hrnas-a-imagenet``).
"""
from __future__ import annotations

import copy
import json
import math
from importlib import resources
from pathlib import Path

import torch.nn as nn

from hrnas import PAPER_SIZES, TASKS  # noqa: F401  (PAPER_SIZES re-exported by hrnas.models)
from hrnas.errors import UserError
from hrnas.io import atomic_write_json
from hrnas.models.non_local import NonLocal
from hrnas.models.heads import ClassificationHead, DenseHead
from hrnas.models.hrnet import BlockFactory, BlockInfo, HRNet
from hrnas.models.layers import ACTIVATIONS, NormConfig
from hrnas.models.searching_block import (ATTENTION_TYPES, KERNEL_SIZES, PLACEMENTS, SE_POSITIONS, AttentionConfig,
                                          SEConfig, SearchingBlock)
from hrnas.models.transformer import Attention, LightweightTransformer, TOKEN_MODES

ARCH_FORMAT, ARCH_VERSION = "hrnas-arch", 1

# Per-task model options as in the authors' configs (docs/authors-code.md §1.8).
TASK_DEFAULTS: dict[str, dict] = {
    "imagenet": dict(head="classification", num_classes=1000, dropout=0.2, in_channels=3,
                     bn_momentum=0.01, bn_eps=1e-3, init="mnas"),
    "cityscapes": dict(head="dense", num_classes=19, head_channels=90, in_channels=3,
                       bn_momentum=0.01, bn_eps=1e-3, init="mnas"),
    "ade20k": dict(head="dense", num_classes=150, head_channels=180, in_channels=3,
                   bn_momentum=0.01, bn_eps=1e-3, init="mnas"),
    "coco": dict(head="dense", num_classes=17, head_channels=90, in_channels=3,
                 bn_momentum=0.1, bn_eps=1e-5, init="heatmap"),
    "kitti": dict(head="dense", num_classes=None, head_channels=90, in_channels=64,
                  bn_momentum=0.01, bn_eps=1e-3, init="mnas"),
}
COMMON_DEFAULTS = dict(expand_ratio=4, act="relu", attention="none", placement="res", attention_branches=None,
                       tokens=64, proj=8, decoder=True, token_mode="channel", nonlocal_ratio=0.5, se_ratio=None,
                       se_on="hidden", se_placement="res+down")
# Options that a retraining recipe sets on a searched architecture (``hrnas train --arch``): they do not
# change the searched blocks, and HR-NAS†‡ adds SE and Swish only when retraining (supplement §1).
RETRAIN_OPTIONS = ("act", "se_ratio", "se_on", "se_placement", "dropout", "init", "num_classes")


def model_options(task: str, **overrides) -> dict:
    """The full option dict of a task's network, with user overrides validated."""
    if task not in TASKS:
        raise UserError(f"task: unknown task '{task}'; accepted: {', '.join(TASKS)}")
    opts = {**COMMON_DEFAULTS, **TASK_DEFAULTS[task]}
    for key, value in overrides.items():
        if key not in opts:
            raise UserError(f"model option '{key}' is unknown; accepted: {', '.join(sorted(opts))}")
        if value is not None:
            opts[key] = value
    _check_options(opts)
    return opts


def _positive_number(value, upper: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= upper


def _check_options(opts: dict) -> None:
    checks = [
        ("act", opts["act"] in ACTIVATIONS, ", ".join(ACTIVATIONS)),
        ("attention", opts["attention"] in ATTENTION_TYPES, ", ".join(ATTENTION_TYPES)),
        ("placement", opts["placement"] in PLACEMENTS, ", ".join(PLACEMENTS)),
        ("attention_branches", opts["attention_branches"] is None or (
            isinstance(opts["attention_branches"], (list, tuple)) and len(opts["attention_branches"]) > 0
            and all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in opts["attention_branches"])),
         "null (every branch) or a list of branch indices >= 0"),
        ("nonlocal_ratio", _positive_number(opts["nonlocal_ratio"], 16), "a number in (0, 16]"),
        ("token_mode", opts["token_mode"] in TOKEN_MODES, ", ".join(TOKEN_MODES)),
        ("expand_ratio", isinstance(opts["expand_ratio"], int) and opts["expand_ratio"] >= 1, "an integer >= 1"),
        ("tokens", isinstance(opts["tokens"], int) and opts["tokens"] >= 1, "an integer >= 1"),
        ("proj", isinstance(opts["proj"], int) and opts["proj"] >= 1, "an integer >= 1"),
        ("se_ratio", opts["se_ratio"] is None or _positive_number(opts["se_ratio"], 16), "null or a number in (0, 16]"),
        ("se_on", opts["se_on"] in SE_POSITIONS, ", ".join(SE_POSITIONS)),
        ("se_placement", opts["se_placement"] in PLACEMENTS, ", ".join(PLACEMENTS)),
    ]
    for name, ok, accepted in checks:
        if not ok:
            raise UserError(f"model option {name}={opts[name]!r} is invalid; expected {accepted}")


def _attention(opts: dict) -> AttentionConfig:
    branches = opts["attention_branches"]
    return AttentionConfig(type=opts["attention"], placement=opts["placement"], tokens=opts["tokens"],
                           proj=opts["proj"], decoder=bool(opts["decoder"]), token_mode=opts["token_mode"],
                           branches=None if branches is None else tuple(branches),
                           nonlocal_ratio=float(opts["nonlocal_ratio"]))


def se_config(opts: dict) -> SEConfig:
    """The Squeeze-and-Excitation settings of a network's options."""
    return SEConfig(ratio=opts["se_ratio"], on=opts["se_on"], placement=opts["se_placement"])


def check_searchable(opts: dict) -> None:
    """Refuse options the search cannot shrink exactly: SE on the hidden features gates every hidden
    channel by a function of the input, so a removed channel's contribution (its constant BN output
    times its gate) is not a constant that could be folded into the next BN. The authors only retrain
    with it (their fused block); search without SE, or with ``model.se_on=output``."""
    if opts["se_ratio"] is not None and opts["se_on"] == "hidden":
        raise UserError("model.se_on=hidden with model.se_ratio set cannot be searched (shrinking a block whose "
                        "hidden features are gated by SE is not exact); search with model.se_ratio=null or "
                        "model.se_on=output, and add the hidden SE when retraining (hrnas train)")


def build_model(task: str | None = None, arch: dict | str | Path | None = None, **overrides) -> HRNet:
    """The super network of ``task`` (or the searched network described by ``arch``).

    ``overrides`` are model options (see ``TASK_DEFAULTS``/``COMMON_DEFAULTS``), e.g.
    ``attention="transformer", placement="res", tokens=8, proj=4``.
    """
    blocks = None
    if arch is not None:
        spec = load_arch(arch) if isinstance(arch, (str, Path)) else arch
        validate_arch(spec, task, str(arch) if isinstance(arch, (str, Path)) else "arch")
        task = spec["task"]
        overrides = {**spec["model"], **overrides}
        blocks = {b["name"]: b for b in spec["blocks"]}
    if task is None:
        raise UserError("build_model: give a task or an arch spec")
    opts = model_options(task, **overrides)
    model = _build(opts, blocks)
    model.task, model.options = task, opts
    init_weights(model, opts["init"])
    return model


def _build(opts: dict, blocks: dict | None) -> HRNet:
    make = BlockFactory(expand_ratio=opts["expand_ratio"], act=opts["act"],
                        norm=NormConfig(opts["bn_momentum"], opts["bn_eps"]), attention=_attention(opts),
                        se=se_config(opts), arch=blocks)
    if opts["head"] == "classification":
        def head(mk, channels):
            return ClassificationHead(mk, channels, opts["num_classes"], opts["dropout"])
    else:
        def head(mk, channels):
            return DenseHead(mk, channels, opts["num_classes"], opts["head_channels"])
    return HRNet(head, make, opts["in_channels"])


def init_weights(model: nn.Module, method: str) -> None:
    """The authors' initialisation (docs/authors-code.md §1.7).

    First every lightweight transformer gets its own initialisation (Xavier-uniform on every weight
    matrix, the in-projection as one joint q/k/v matrix, and on the decoder queries; the authors'
    ``Transformer._reset_parameters``), then the network's rule:
    ``mnas``: conv weights N(0, √(2 / fan_out)) with fan_out = k² (depthwise) or k²·C_out, linear weights
    U(±1/√out_features), biases 0; the attention in-projections and the queries keep their Xavier init
    (the authors' are not ``nn.Linear`` modules, which their rule re-initialises).
    ``mnas_fanin``: the same, but linear weights U(±1/√in_features) (PyTorch's bound): for classifiers
    with few classes, where 1/√out_features is large (10 classes: ±0.32 over 1600 features, a
    cross-entropy of 7.7 at initialisation instead of ln 10 = 2.3).
    ``heatmap`` (COCO keypoints): every conv N(0, 0.001), biases 0; linear layers are left as built
    (the transformers' Xavier), as the authors' heatmap init touches only convs and BNs.
    BatchNorm γ = 1, β = 0 everywhere except the Non-local blocks' output BN (γ = 0: each starts as
    the identity, as in Wang et al. 2018).
    """
    for m in model.modules():
        if isinstance(m, LightweightTransformer):
            m.reset_parameters()
    in_projections = {id(lin) for m in model.modules() if isinstance(m, Attention) for lin in (m.q, m.kv)}
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if method == "heatmap":
                nn.init.normal_(m.weight, 0.0, 0.001)
            else:
                k2 = m.kernel_size[0] * m.kernel_size[1]
                # the authors' rule: k² for a depthwise conv (groups == in_channels), else k²·C_out, also
                # for a grouped conv (dividing by the groups would make the grouped shortcuts' weights
                # up to √groups times larger and the logits explode at initialisation)
                fan_out = k2 if m.groups == m.in_channels else k2 * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and method != "heatmap" and id(m) not in in_projections:
            bound = 1.0 / math.sqrt(m.in_features if method == "mnas_fanin" else m.out_features)
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    for m in model.modules():  # a Non-local block keeps its zero-initialised output BN (an identity at start)
        if isinstance(m, NonLocal):
            m.zero_init_output()


def block_entry(name: str, block: SearchingBlock) -> dict:
    return {"name": name, "inp": block.inp, "oup": block.oup, "stride": block.stride,
            "kernels": list(block.kernels), "hidden": list(block.hidden), "tokens": block.tokens}


def spec_of(model: HRNet) -> dict:
    """The architecture spec of a (possibly shrunk) network."""
    net = getattr(model, "module", model)
    return {"format": ARCH_FORMAT, "version": ARCH_VERSION, "task": net.task,
            "model": copy.deepcopy(net.options),
            "blocks": [block_entry(name, block) for name, block in net.searching_blocks()]}


def _is_int(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def validate_block(entry, source: str = "arch") -> None:
    """Raise ``UserError`` naming ``source`` if one block entry of a spec is malformed: a name, positive
    ``inp``/``oup``/``stride``, distinct kernel sizes with one hidden width >= 0 each, ``tokens`` >= 0."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise UserError(f"{source}: block {entry!r} is not a dict with a \"name\"")
    name = entry["name"]
    for key in ("inp", "oup", "stride"):
        if not _is_int(entry.get(key), 1):
            raise UserError(f"{source}: block '{name}' needs a positive integer {key!r} (got {entry.get(key)!r})")
    kernels, hidden = entry.get("kernels"), entry.get("hidden")
    if (not isinstance(kernels, list) or not isinstance(hidden, list) or len(kernels) != len(hidden)
            or len(set(kernels)) != len(kernels) or any(k not in KERNEL_SIZES for k in kernels)):
        raise UserError(f"{source}: block '{name}': kernels must be distinct values from {list(KERNEL_SIZES)} with "
                        f"one hidden width each (got kernels={kernels!r}, hidden={hidden!r})")
    if not all(_is_int(h, 0) for h in hidden):
        raise UserError(f"{source}: block '{name}': hidden widths must be integers >= 0 (got {hidden!r})")
    if not _is_int(entry.get("tokens", 0), 0):
        raise UserError(f"{source}: block '{name}': tokens must be an integer >= 0 (got {entry.get('tokens')!r})")


def validate_arch(spec, task: str | None, source: str = "arch") -> None:
    """Raise ``UserError`` naming ``source`` and the first problem found in an architecture spec."""
    def bad(msg):
        raise UserError(f"{source}: {msg}")

    if not isinstance(spec, dict) or spec.get("format") != ARCH_FORMAT:
        bad(f"not an HR-NAS architecture file (expected \"format\": \"{ARCH_FORMAT}\")")
    if spec.get("version") != ARCH_VERSION:
        bad(f"unsupported version {spec.get('version')!r} (this hrnas reads version {ARCH_VERSION})")
    if spec.get("task") not in TASKS:
        bad(f"unknown task {spec.get('task')!r}; accepted: {', '.join(TASKS)}")
    if task is not None and spec["task"] != task:
        bad(f"architecture is for task '{spec['task']}', not '{task}'")
    if not isinstance(spec.get("model"), dict) or not isinstance(spec.get("blocks"), list) or not spec["blocks"]:
        bad("needs a \"model\" object and a non-empty \"blocks\" list")
    reference = _supernet_blocks(spec["task"], spec["model"])
    names = [b.get("name") if isinstance(b, dict) else None for b in spec["blocks"]]
    if len(set(names)) != len(names):
        bad("duplicate block names")
    for entry in spec["blocks"]:
        if not isinstance(entry, dict) or entry.get("name") not in reference:
            bad(f"block {entry.get('name') if isinstance(entry, dict) else entry!r} is not in the "
                f"{spec['task']} super network")
        name, ref = entry["name"], reference[entry["name"]]
        for key in ("inp", "oup", "stride"):
            if entry.get(key) != ref[key]:
                bad(f"block '{name}': {key}={entry.get(key)!r} but the {spec['task']} super network has {ref[key]}")
        validate_block(entry, source)
    missing = sorted(set(reference) - set(names))
    if missing:
        bad(f"{len(missing)} blocks of the {spec['task']} super network are missing, e.g. '{missing[0]}'")


_SUPERNET_CACHE: dict[tuple, tuple[dict, tuple[BlockInfo, ...]]] = {}


class _SingleChannelPaths(dict):
    """An arch lookup answering every block with one 3×3 path of width 1 (structure only, cheap)."""

    def __getitem__(self, name):
        return {"kernels": [3], "hidden": [1], "tokens": 0}


def _supernet_structure(task: str, model: dict) -> tuple[dict, tuple[BlockInfo, ...]]:
    key = (task, model.get("head_channels"), model.get("num_classes"))
    if key not in _SUPERNET_CACHE:
        try:
            opts = model_options(task, **{k: model[k] for k in ("head_channels", "num_classes") if k in model})
        except UserError as err:
            raise UserError(f"arch model options: {err}") from None
        net = _build(opts, _SingleChannelPaths())
        blocks = {name: {"inp": b.inp, "oup": b.oup, "stride": b.stride} for name, b in net.searching_blocks()}
        _SUPERNET_CACHE[key] = blocks, net.feature_info
    return _SUPERNET_CACHE[key]


def _supernet_blocks(task: str, model: dict) -> dict:
    """name → {inp, oup, stride} of the super network of ``task`` with the spec's head options."""
    return _supernet_structure(task, model)[0]


def block_layout(spec: dict, source: str = "spec") -> tuple[BlockInfo, ...]:
    """Where each block of the architecture ``spec`` sits (:class:`~hrnas.models.hrnet.BlockInfo`, in
    construction order): read from the network the builder makes, whose wiring the searched widths do not change."""
    validate_arch(spec, None, source)
    return _supernet_structure(spec["task"], spec["model"])[1]


ARCHS_PACKAGE = "hrnas.configs.archs"


def shipped_archs() -> dict[str, object]:
    """Name → file of the architectures shipped in ``hrnas/configs/archs/`` (the file name without .json)."""
    folder = resources.files(ARCHS_PACKAGE)
    return {f.name[:-len(".json")]: f for f in sorted(folder.iterdir(), key=lambda f: f.name)
            if f.name.endswith(".json")}


def load_arch(path: str | Path) -> dict:
    """An architecture spec from a JSON file, or a shipped architecture by name (``hrnas-a-imagenet``)."""
    path = Path(path)
    if path.is_file():
        text, source = path.read_text(), path
    else:
        shipped = shipped_archs()
        if str(path) not in shipped:
            raise UserError(f"{path}: no such architecture file, nor a shipped architecture "
                            f"(shipped: {', '.join(shipped)})")
        text, source = shipped[str(path)].read_text(), f"hrnas/configs/archs/{path}.json"
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{source}: not valid JSON ({err})") from None


def save_arch(spec: dict, path: str | Path) -> Path:
    """Write an architecture spec atomically."""
    return atomic_write_json(path, spec)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


