"""What ``hrnas search | train | eval | export`` run: :func:`run_experiment`, :func:`evaluate_checkpoint`,
:func:`export_arch`; and :func:`load_run`, a finished run's trained network for plots and notebooks.

Data: ``--data-root`` (or the recipe's ``data.root``); without it the embedded synthetic dataset is
generated on first use (``smoke`` data for the smoke preset, ``tiny`` data for tiny); the ``paper``
preset refuses to run on synthetic data. ``--resume`` continues from the run directory's latest
checkpoint with the configuration stored there (given overrides must agree with it).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from hrnas.engine import distributed as D
from hrnas.engine.checkpoint import find_latest, load_checkpoint
from hrnas.engine.config import flatten, load_config
from hrnas.errors import UserError
from hrnas.tasks import get_task

MODES = ("search", "train")


def resolve_data_root(task: str, preset: str, data_root) -> Path:
    """The dataset folder: the given one, or the embedded synthetic data for smoke/tiny."""
    if data_root is not None:
        root = Path(data_root).expanduser()
        if not root.is_dir():
            raise UserError(f"--data-root {root} is not a directory")
        return root
    from hrnas.data import PRESETS as SYNTHETIC_PRESETS, ensure_dataset

    if preset not in SYNTHETIC_PRESETS:
        raise UserError(f"--preset {preset} needs the real {task} dataset: give --data-root DIR (the embedded "
                        f"synthetic data is only for the tiny and smoke presets)")

    if D.is_dist():  # one process generates, the others wait and reuse it
        root = ensure_dataset(task, preset) if D.is_main() else None
        D.barrier()
        return ensure_dataset(task, preset) if root is None else root
    return ensure_dataset(task, preset)


def _check_search_values(cfg: dict) -> None:
    s = cfg["search"]
    for key in ("rho", "threshold", "min_removable_macs"):
        value = s[key]
        if value is not None and (not math.isfinite(value) or value < 0):
            raise UserError(f"search.{key}={value} must be a finite number >= 0")


def _synthetic_marker(root: Path) -> dict | None:
    from hrnas.data.synthetic import read_marker

    return read_marker(root)


def _resume_checkpoint(out: Path, task: str, cfg: dict) -> dict:
    path = find_latest(out)
    if path is None:
        raise UserError(f"--resume: no checkpoint (ckpt_*.pt) in {out}")
    ckpt = load_checkpoint(path)
    if ckpt.get("task") != task:
        raise UserError(f"--resume: {path} is a {ckpt.get('task')} checkpoint, not {task}")
    stored = ckpt["config"]
    if stored.get("preset") != cfg["preset"]:
        raise UserError(f"--resume: --preset {cfg['preset']} differs from the run's preset {stored.get('preset')} "
                        f"({path})")
    given = flatten(cfg)
    for key, value in flatten(stored).items():
        if key not in ("train.progress",) and given.get(key) != value:
            raise UserError(f"--resume: {key}={given.get(key)!r} differs from the run's {value!r} ({path}); "
                            f"resume with the run's settings")
    return ckpt


def run_experiment(task: str, mode: str = "search", out=None, data_root=None, preset: str = "tiny",
                   overrides=(), arch=None, resume: bool = False, progress: bool = True, reuse=()) -> dict:
    """Search (``mode="search"``: the super network with the L1 penalty and progressive shrinking) or
    retrain (``mode="train"``: the architecture ``arch`` from scratch, search disabled) ``task`` into run
    directory ``out``. Returns ``{"metrics", "best", "steps", "wall_time_s", "profile", "run_dir"}``.

    ``reuse``: run directories (or folders of them) of earlier runs; when one finished the very same
    experiment (mode, resolved recipe, dataset and architecture), its result is returned (with
    ``"reused": True`` and its own ``run_dir``) and nothing is trained.
    """
    from hrnas.engine.trainer import Trainer
    from hrnas.search import search_hooks

    if mode not in MODES:
        raise UserError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if out is None:
        raise UserError("--out RUN_DIR is required")
    out = Path(out).expanduser()
    overrides = list(overrides or ())
    cfg = load_config(task, preset, overrides)
    _check_search_values(cfg)
    spec = None
    if mode == "train":
        if arch is None:
            raise UserError("hrnas train needs --arch FILE.json (from `hrnas export`)")
        from hrnas.models import load_arch, validate_arch

        spec = load_arch(arch) if isinstance(arch, (str, Path)) else arch
        validate_arch(spec, task, str(arch) if isinstance(arch, (str, Path)) else "arch")
        cfg["search"]["enabled"] = False
    elif arch is not None:
        raise UserError("--arch: hrnas search starts from the super network; use hrnas train to retrain an arch")
    ckpt = None
    if resume:
        ckpt = _resume_checkpoint(out, task, cfg)
        cfg = ckpt["config"]
    elif find_latest(out) is not None:
        raise UserError(f"--out {out} already holds a run (ckpt_*.pt); add --resume to continue it or choose "
                        f"another folder")
    root = resolve_data_root(task, preset, data_root if data_root is not None else cfg["data"]["root"])
    if not resume:
        same = find_identical_run(reuse, mode, cfg, root, spec)
        if same is not None:
            return same
    meta = {"mode": mode, "data_root": str(root), "synthetic": _synthetic_marker(root), "overrides": overrides,
            "arch_file": str(arch) if isinstance(arch, (str, Path)) else None}
    if mode == "train":
        meta["shrink_history"] = []  # a retrained network is never shrunk
    if ckpt is not None:
        meta = {**ckpt.get("meta", {}), "resumed_from_step": int(ckpt["step"])}
    try:
        trainer = Trainer(get_task(cfg), cfg, out, data_root=root, arch=spec, hooks=search_hooks(cfg) if mode == "search" else [],
                          resume_from=ckpt, progress=progress, meta=meta)
        return trainer.fit()
    finally:
        D.cleanup()


def _checkpoint_file(path) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        found = find_latest(path)
        if found is None:
            raise UserError(f"--checkpoint {path}: the folder holds no checkpoint (ckpt_*.pt)")
        return found
    if not path.exists():
        raise UserError(f"--checkpoint {path} not found")
    return path


def evaluate_checkpoint(task: str, checkpoint, data_root=None, preset: str | None = None, overrides=(),
                        detections=None, *, return_model: bool = False, metrics: bool = True):
    """Metrics of a checkpoint (file or run directory) on the val split, with the stored recipe's
    evaluation settings (or those of ``preset`` + ``overrides``); EMA weights when ``eval.use_ema``.

    ``detections`` (coco): a COCO person detection-results JSON whose boxes (score >=
    ``eval.det_score_thr``) replace the ground-truth boxes (``eval.use_gt_boxes=false``), the
    standard COCO keypoint protocol. ``return_model=True`` returns ``(metrics, LoadedRun)`` instead: the
    network exactly as evaluated (BN statistics re-calibrated, eval mode), so that the predictions a
    notebook draws are the evaluated ones; with ``metrics=False`` as well, only that network is prepared
    (the same re-calibration, no pass over the val split: the metrics dict holds checkpoint and step)."""
    import torch

    from hrnas.engine.evaluation import (build_calib_loader, build_val_loader, calibration_seed,
                                         checkpoint_weights, evaluate_model)

    if detections is not None:
        if task != "coco":
            raise UserError(f"--detections: only for the coco task (person boxes), not {task}")
        from hrnas.data.coco import read_detections

        read_detections(detections)  # a missing or malformed file fails here, before anything is loaded
    path = _checkpoint_file(checkpoint)
    ckpt = load_checkpoint(path)
    if ckpt.get("task") != task:
        raise UserError(f"--checkpoint {path} is a {ckpt.get('task')} checkpoint, not {task}")
    stored = ckpt["config"]
    overrides = list(overrides or ())
    if preset is None:
        preset = stored["preset"]
        overrides = list(ckpt.get("meta", {}).get("overrides", [])) + overrides
    cfg = load_config(task, preset, overrides)
    if detections is not None:
        cfg["eval"].update(use_gt_boxes=False, detections=str(Path(detections).expanduser()))
    root = resolve_data_root(task, preset, data_root if data_root is not None else cfg["data"]["root"])
    t = get_task(cfg)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    channels_last = device.type == "cpu" or cfg["train"]["channels_last"]
    if not (metrics or return_model):
        raise UserError("evaluate_checkpoint: metrics=False needs return_model=True (nothing to return)")
    val_loader = build_val_loader(t, cfg, root, max(1, cfg["data"]["batch_size"])) if metrics else None
    calib_loader = build_calib_loader(t, cfg, root, cfg["train"]["seed"], 0, 1, device.type == "cuda")
    net = t.build_model(ckpt["arch"])
    net.load_state_dict(checkpoint_weights(ckpt, config=cfg, where=str(path)))
    net.to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    out_dir = path.parent / "eval"
    metrics = evaluate_model(t, net, cfg, val_loader=val_loader, calib_loader=calib_loader, device=device,
                             channels_last=channels_last, calib_seed=calibration_seed(cfg, ckpt["step"]),
                             out_dir=out_dir, copy_model=not return_model, metrics=metrics)
    result = {"checkpoint": str(path), "step": int(ckpt["step"]), **metrics}
    if not return_model:
        return result
    record_file = path.parent / "run.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {"preset": preset}
    return result, LoadedRun(dir=path.parent, record=record, task=t, data_root=root,
                             synthetic=_synthetic_marker(root) is not None, net=net.eval(), step=int(ckpt["step"]))


def export_arch(run_dir, out) -> Path:
    """Write the searched architecture of a run (its ``arch.json``, or for an unfinished run the
    architecture the latest checkpoint would export) to ``out``."""
    from hrnas.models import load_arch, save_arch, validate_arch

    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} not found")
    final = run_dir / "arch.json"
    if final.is_file():
        spec = load_arch(final)
        validate_arch(spec, None, str(final))
    else:
        path = find_latest(run_dir)
        if path is None:
            raise UserError(f"run directory {run_dir} has neither arch.json nor a checkpoint (ckpt_*.pt)")
        ckpt = load_checkpoint(path)
        best = ckpt.get("best")
        exports_best = ckpt["config"]["search"]["export"] == "best_val" and ckpt["config"]["search"]["enabled"]
        spec = best["arch"] if exports_best and best else ckpt["arch"]
    out = Path(out).expanduser()
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name such as arch.json")
    return save_arch(json.loads(json.dumps(spec)), out)


@dataclass
class LoadedRun:
    """A run directory opened for inspection: its ``run.json`` record, its task and dataset, and the
    network of its latest checkpoint (eval mode, with the task's eval preparation applied; None when
    opened with ``load_run(..., network=False)``)."""

    dir: Path
    record: dict
    task: object
    data_root: Path
    synthetic: bool
    net: object
    step: int

    @property
    def label(self) -> str:
        """A short provenance label for figure titles, e.g. ``"SYNTHETIC data, preset tiny"``."""
        return data_label(self.synthetic, self.record["preset"])


def data_label(synthetic: bool, preset: str) -> str:
    """The provenance label of every number and figure, e.g. ``"SYNTHETIC data, preset tiny"``."""
    return f"{'SYNTHETIC' if synthetic else 'real'} data, preset {preset}"


def load_run(run_dir, ema: bool | None = None, *, network: bool = True) -> LoadedRun:
    """Open a run directory (of ``hrnas search`` / ``train``): the network of its latest checkpoint.

    ``ema``: load the EMA weights (default: what the run evaluated with: ``eval.use_ema`` when the run
    kept an EMA). ``network=False``: only the record, task and data (``net`` None, ``step`` the
    record's), without reading the checkpoint (seconds for a super network's).
    """
    run_dir = Path(run_dir).expanduser()
    record_file = run_dir / "run.json"
    if not record_file.is_file():
        raise UserError(f"run directory {run_dir} has no run.json (not a run, or it never started)")
    record = json.loads(record_file.read_text())
    if not network:
        root = Path(record["data_root"])
        return LoadedRun(dir=run_dir, record=record, task=get_task(record["config"]), data_root=root,
                         synthetic=_synthetic_marker(root) is not None, net=None, step=int(record.get("step") or 0))
    path = find_latest(run_dir)
    if path is None:
        raise UserError(f"run directory {run_dir} has no checkpoint (ckpt_*.pt)")
    ckpt = load_checkpoint(path)
    task = get_task(ckpt["config"])
    net = task.build_model(ckpt["arch"])
    from hrnas.engine.evaluation import checkpoint_weights

    net.load_state_dict(checkpoint_weights(ckpt, ema, where=str(path)))
    root = Path(record["data_root"])
    return LoadedRun(dir=run_dir, record=record, task=task, data_root=root, synthetic=_synthetic_marker(root) is not None,
                     net=task.prepare_eval_model(net).eval(), step=int(ckpt["step"]))


def _run_records(folders):
    for folder in folders:
        folder = Path(folder).expanduser()
        for record in [folder / "run.json", *sorted(folder.glob("*/run.json"))]:
            try:
                yield record.parent, json.loads(record.read_text())
            except (OSError, json.JSONDecodeError):
                continue


def find_identical_run(folders, mode: str, cfg: dict, data_root, arch: dict | None = None) -> dict | None:
    """The result of a finished run in ``folders`` (run directories or their parents) with the same mode,
    resolved recipe, dataset and (for ``train``) architecture, or None."""
    for run_dir, run in _run_records(folders or ()):
        if (run.get("status") == "finished" and run.get("mode") == mode and run.get("config") == cfg
                and Path(run.get("data_root", "")) == Path(data_root)
                and (arch is None or run.get("arch", {}).get("blocks") == arch.get("blocks"))):
            return {"metrics": run["metrics"], "best": run.get("best"), "steps": run["step"],
                    "wall_time_s": run.get("wall_time_s"), "profile": run.get("profile"),
                    "run_dir": str(run_dir), "reused": True}
    return None
