"""The training loop shared by every task, for a search and for retraining alike.

Per iteration (as the authors' ``train.py``): task loss (+ the coupled L2 term when
``optim.decay_mode: l2``, + the hooks' loss terms, e.g. the search's λ(t)·resource-aware L1 on the BN γ)
→ NaN/inf guard → backward (``train.amp`` on CUDA) → optional gradient clipping → optimizer step → LR
schedule step → EMA update. After the step: the hooks' ``after_step`` (the search shrinks there), an
evaluation every ``eval.interval`` epochs (EMA weights, BN re-calibration on training batches:
:mod:`hrnas.engine.evaluation`), the log (:mod:`hrnas.engine.runlog`), and a checkpoint every
``train.ckpt_interval`` epochs (both may be fractions of an epoch) and at the end. The search itself is
a plug-in (:mod:`hrnas.engine.hooks`, :class:`hrnas.search.hook.SearchHook`).

Determinism: the sampler, the DataLoader's worker seeds and the datasets' augmentation RNG are
re-seeded from (seed, epoch) at the start of every epoch, evaluation runs under a saved/restored RNG
state, and checkpoints hold every rank's RNG state, the optimizer state keyed by parameter name and
the per-row accumulators. ``resume`` therefore continues bit-for-bit on the CPU (a mid-epoch resume
replays the loader up to the checkpoint's position).

Distributed (``torchrun``): DDP (gloo on CPU, NCCL on CUDA), per-process BN statistics as the authors
(``train.sync_bn: true`` = SyncBatchNorm, CUDA only) with the BN buffers averaged over the processes
after every step, DistributedSampler for training, un-padded shards for evaluation, metrics reduced by
the tasks, rank 0 writes. DDP is rebuilt after every hook's network edit (a shrink) (its buckets are fixed at construction).

Run directory: ``steps.jsonl`` (every ``train.log_interval`` steps), ``metrics.jsonl`` and
``metrics.csv`` (a row per epoch and per evaluation), ``run.json``, ``arch.json`` (the exported
architecture), ``ckpt_<step>.pt`` (the latest checkpoint only), task outputs (KITTI result files,
COCO keypoint results).
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from hrnas.engine import distributed as D
from hrnas.engine.checkpoint import (checkpoint_path, find_latest, get_rng_state, save_checkpoint,
                                     set_rng_state)
from hrnas.engine.ema import ModelEMA
from hrnas.engine.evaluation import (build_calib_loader, build_val_loader, calibration_seed, evaluate_model,
                                     reseed_augmentation)
from hrnas.engine.hooks import Hook
from hrnas.engine.optim import CoupledL2, build_optimizer_from_config
from hrnas.engine.runlog import RunLog, StepMeter
from hrnas.engine.schedule import build_scheduler_from_config
from hrnas.engine.state import load_optimizer_state_by_name, optimizer_state_by_name
from hrnas.errors import UserError
from hrnas.io import atomic_write_json
from hrnas.provenance import git_info, versions

__all__ = ["Trainer", "NonFiniteLoss"]


class NonFiniteLoss(UserError):
    """The loss became NaN/inf; training stopped before the update (the last checkpoint is intact)."""


def _steps(epochs: float, steps_per_epoch: int, key: str) -> int:
    if not epochs > 0:
        raise UserError(f"{key}={epochs} must be > 0 (epochs)")
    return max(1, int(round(epochs * steps_per_epoch)))


# ------------------------------------------------------------------------------------- trainer
class Trainer:
    """One search or retraining run of ``task`` (a :class:`hrnas.tasks.base.Task`) with recipe ``cfg``.

    Args:
        run_dir: output folder (rank 0 writes).
        data_root: dataset folder (real or generated).
        arch: architecture spec to (re)train; ``None`` = the super network.
        hooks: plug-ins of the loop (:class:`hrnas.engine.hooks.Hook`), e.g. the search
            (:class:`hrnas.search.hook.SearchHook`); set up in order after the network and data exist.
        resume_from: a loaded checkpoint of this run to continue from.
        progress: tqdm bars and one line per evaluation on rank 0.
        meta: extra fields for ``run.json`` (mode, data root, overrides, synthetic marker).
    """

    def __init__(self, task, cfg: dict, run_dir, *, data_root, arch: dict | None = None, hooks: list[Hook] = (),
                 resume_from: dict | None = None, progress: bool = True, meta: dict | None = None):
        self.task, self.cfg, self.run_dir = task, cfg, Path(run_dir)
        self.hooks = list(hooks)
        self.meta = dict(meta or {})
        info = D.init_distributed()
        self.device, self.rank, self.world = info.device, info.rank, info.world_size
        t = cfg["train"]
        self.device = D.training_device(t["device"], self.device, self.world)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            torch.backends.cudnn.benchmark = bool(t["cudnn_benchmark"])
        self.progress = progress and t["progress"] and D.is_main()
        # train.amp: float16 autocast with a GradScaler, or bfloat16 autocast (no scaler); CUDA only
        self.amp_dtype = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[t["amp"]] if self.cuda else None
        self.sync_bn = bool(t["sync_bn"]) and self.world > 1
        if self.sync_bn and not self.cuda:
            raise UserError("train.sync_bn=true needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); use "
                            "train.sync_bn=false (per-process BN statistics, as the authors)")
        self.channels_last = bool(t["channels_last"]) or not self.cuda
        self.seed = int(t["seed"])
        D.seed_everything(self.seed)  # the same initial weights on every rank (and so the same EMA)
        self._build_data(Path(data_root))
        self.log = RunLog(self.run_dir, D.is_main())

        if resume_from is not None:
            arch = resume_from["arch"]
        self.net = task.build_model(arch).to(self.device)
        if self.sync_bn:
            self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
        self._to_memory_format()
        self.searchable = task.searchable(self.net)
        self.searchable.set_grad_checkpointing(bool(cfg["train"]["grad_checkpointing"]))
        self.searchable.set_fast_paths(cfg["train"]["fast_paths"])
        self.optimizer = build_optimizer_from_config(self.net, cfg)
        self.scheduler = build_scheduler_from_config(self.optimizer, cfg, total_steps=self.total_steps,
                                                     steps_per_epoch=self.steps_per_epoch)
        self.ema = ModelEMA.from_config(self.net, cfg) if cfg["ema"]["enabled"] else None
        o = cfg["optim"]
        self.l2 = CoupledL2(self.net, o["weight_decay"]) if o["decay_mode"] == "l2" and o["weight_decay"] > 0 else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        for hook in self.hooks:
            hook.setup(self)
        self.step, self.elapsed = 0, 0.0
        self.meter = StepMeter()  # this session's training steps (run.json: throughput)
        self.best: dict | None = None
        self.last_metrics: dict = {}
        self.acc = self._zero_acc()
        self.last_ckpt: Path | None = None
        self._eval_net: nn.Module | None = None
        D.seed_everything(self.seed, self.rank)  # per-rank dropout / pillar shuffling from here on
        if resume_from is not None:
            self._restore(resume_from)
        elif D.is_main():
            self.log.truncate(0)
        self._wrap()

    # ---- setup -----------------------------------------------------------------------------------
    def _build_data(self, root: Path) -> None:
        from hrnas.data import build_loader

        cfg, task = self.cfg, self.task
        gb = cfg["data"]["batch_size"]
        if gb < 1 or gb % self.world:
            raise UserError(f"data.batch_size={gb} must be a positive multiple of the number of processes "
                            f"({self.world})")
        self.batch = gb // self.world
        workers = cfg["data"]["num_workers"]
        if workers < 0:
            raise UserError(f"data.num_workers={workers} must be >= 0")
        self.train_ds = task.train_dataset(root, seed=self.seed)
        if len(self.train_ds) < gb:
            raise UserError(f"{root}: the training split has {len(self.train_ds)} samples, fewer than "
                            f"data.batch_size={gb}")
        self.train_sampler = DistributedSampler(self.train_ds, num_replicas=self.world, rank=self.rank,
                                                shuffle=True, seed=self.seed, drop_last=True)
        self.train_loader = build_loader(self.train_ds, task.name, batch_size=self.batch, shuffle=False,
                                         sampler=self.train_sampler, num_workers=workers, seed=self.seed,
                                         drop_last=True, pin_memory=self.cuda)
        self.steps_per_epoch = len(self.train_loader)
        t = cfg["train"]
        total = int(math.ceil(t["epochs"] * self.steps_per_epoch))
        if t["max_steps"] is not None:
            if t["max_steps"] < 1:
                raise UserError(f"train.max_steps={t['max_steps']} must be >= 1 (or null)")
            total = min(total, t["max_steps"])
        if total < 1:
            raise UserError(f"train.epochs={t['epochs']} gives no training step")
        self.total_steps = total
        self.eval_every = _steps(cfg["eval"]["interval"], self.steps_per_epoch, "eval.interval")
        self.ckpt_every = _steps(t["ckpt_interval"], self.steps_per_epoch, "train.ckpt_interval")
        if t["log_interval"] < 1:
            raise UserError(f"train.log_interval={t['log_interval']} must be >= 1")
        if t["grad_clip"] is not None and not t["grad_clip"] > 0:
            raise UserError(f"train.grad_clip={t['grad_clip']} must be > 0 (or null)")
        self.val_loader = build_val_loader(task, cfg, root, self.batch, self.rank, self.world, self.cuda)
        self.calib_loader = build_calib_loader(task, cfg, root, self.seed, self.rank, self.world, self.cuda)

    def _to_memory_format(self) -> None:
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)

    def _wrap(self) -> None:
        """(Re)wrap the network in DDP (after construction and after every shrink)."""
        self.model = self.net
        if self.world > 1:
            # channels_last 1×1 weights have size-1 strides that differ from their grads': harmless
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            self.model = nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index] if self.cuda else None)

    @staticmethod
    def _zero_acc() -> dict:
        return {"n": 0, "loss": 0.0, "task_loss": 0.0, "t0": None}

    # ---- checkpoints -----------------------------------------------------------------------------
    def _checkpoint(self) -> None:
        from hrnas.models import spec_of

        rngs = D.all_gather_objects(get_rng_state())
        if not D.is_main():
            return
        path = checkpoint_path(self.run_dir, self.step)
        save_checkpoint(
            path, task=self.task.name, step=self.step, epoch=self.step // self.steps_per_epoch,
            total_steps=self.total_steps, arch=spec_of(self.searchable), config=self.cfg,
            model=self.net.state_dict(), optimizer=optimizer_state_by_name(self.optimizer, self.net),
            scheduler=self.scheduler.state_dict(), ema=self.ema.state_dict() if self.ema else None,
            **{hook.name: hook.state_dict() for hook in self.hooks},
            scaler=self.scaler.state_dict(), rng_ranks=rngs, best=self.best, last_metrics=self.last_metrics,
            acc={k: v for k, v in self.acc.items() if k != "t0"}, elapsed=self.elapsed + self._session(),
            meta=self.meta)
        for old in self.run_dir.glob("ckpt_*.pt"):
            if old != path:
                old.unlink(missing_ok=True)
        self.last_ckpt = path

    def _restore(self, ckpt: dict) -> None:
        self.net.load_state_dict(ckpt["model"])
        load_optimizer_state_by_name(self.optimizer, self.net, ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        for hook in self.hooks:
            if ckpt.get(hook.name):
                hook.load_state_dict(ckpt[hook.name])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        self.best, self.last_metrics = ckpt.get("best"), ckpt.get("last_metrics") or {}
        self.acc = {**self._zero_acc(), **ckpt["acc"]}
        self.elapsed = float(ckpt.get("elapsed", 0.0))
        rngs = ckpt.get("rng_ranks") or [ckpt["rng"]]
        set_rng_state(rngs[self.rank] if len(rngs) == self.world else ckpt["rng"])
        self.last_ckpt = find_latest(self.run_dir)
        self.log.truncate(self.step)

    # ---- loop ------------------------------------------------------------------------------------
    def _session(self) -> float:
        return time.perf_counter() - self._t_start if hasattr(self, "_t_start") else 0.0

    def _start_epoch(self, epoch: int) -> None:
        self.train_sampler.set_epoch(epoch)
        reseed_augmentation(self.train_ds, (self.seed * 1_000_003 + epoch) * 64 + self.rank)
        self.train_loader.generator.manual_seed(self.seed * 1_000_003 + epoch)

    def train_step(self, batch, step: int) -> dict:
        """One optimizer step on ``batch`` as iteration ``step`` (1-based); returns the logged scalars."""
        cfg = self.cfg
        self.model.train()
        batch = self.task.to_device(batch, self.device, self.channels_last)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float16,
                            enabled=self.amp_dtype is not None):
            task_loss, extra = self.task.loss(self.model, batch)
        task_loss = task_loss.float()
        loss = task_loss
        logs = {}
        if self.l2 is not None:  # the coupled L2 term: its value here, its gradient added after the backward pass
            l2 = self.l2.value()
            loss = loss + l2
            logs["l2"] = float(l2)
        for hook in self.hooks:
            term, hook_logs = hook.loss_terms(step - 1)
            if term is not None:
                loss = loss + term
            logs.update(hook_logs)
        bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach())) else 1.0], device=self.device)
        if float(D.all_reduce_sum(bad)) > 0:
            where = str(self.last_ckpt) if self.last_ckpt else "none (no checkpoint was written yet)"
            raise NonFiniteLoss(f"step {step}: the loss is {float(loss.detach()):g} (task loss {float(task_loss.detach()):g}) on at "
                                f"least one process; training stopped before this update; last good checkpoint: "
                                f"{where}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.l2 is not None or cfg["train"]["grad_clip"] is not None:  # (a no-op when the scaler is off)
            self.scaler.unscale_(self.optimizer)
        if self.l2 is not None:
            self.l2.add_gradient()
        if cfg["train"]["grad_clip"] is not None:
            logs["grad_norm"] = float(nn.utils.clip_grad_norm_(self.net.parameters(), cfg["train"]["grad_clip"]))
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if not self.sync_bn:  # SyncBatchNorm already computes global statistics
            D.average_buffers(self.net, self.world)
        if self.ema is not None:
            self.ema.update(self.net)
        return {"loss": float(loss.detach()), "task_loss": float(task_loss.detach()), "lr": lr, **logs, **extra}

    def evaluate(self) -> dict:
        """Metrics of the current network (EMA weights when ``eval.use_ema``), evaluated on a copy that
        is kept between evaluations (deep-copying the network is slow) and rebuilt after a shrink."""
        if self._eval_net is None:
            self._eval_net = copy.deepcopy(self.net)
        if self.cfg["eval"]["use_ema"] and self.ema is not None:
            self.ema.copy_to(self._eval_net)
        else:
            self._eval_net.load_state_dict(self.net.state_dict())
        return evaluate_model(self.task, self._eval_net, self.cfg, val_loader=self.val_loader,
                              calib_loader=self.calib_loader, device=self.device, channels_last=self.channels_last,
                              calib_seed=calibration_seed(self.cfg, self.step), out_dir=self.run_dir if D.is_main() else None,
                              progress=self.progress, copy_model=False)

    def _after_edit(self) -> None:
        """A hook changed the network (a shrink): rebuild the evaluation copy, the layout, the kept tensor
        lists and DDP."""
        self._eval_net = None
        self._to_memory_format()  # shrinking slices tensors into the default layout
        for kept in (self.l2, self.ema):
            if kept is not None:
                kept.refresh()
        self._wrap()

    def _row(self, step: int, metrics: dict | None, shrink: dict | None) -> dict:
        acc = self.acc
        row = {"step": step, "epoch": round(step / self.steps_per_epoch, 4),
               "lr": self.optimizer.param_groups[0]["lr"]}
        if acc["n"]:
            row["train_loss"] = acc["loss"] / acc["n"]
            row["train_task_loss"] = acc["task_loss"] / acc["n"]
        for hook in self.hooks:
            row.update(hook.row(step))
        row["params"] = sum(p.numel() for p in self.searchable.parameters())
        if shrink:
            row["removed_channels"] = shrink["removed_channels"]
            row["removed_tokens"] = shrink["removed_tokens"]
        row["time_s"] = round(self.elapsed + self._session(), 2)
        if metrics:
            row.update({f"val_{k}": v for k, v in metrics.items()})
        return row

    def fit(self) -> dict:
        """Run (or continue) the training; returns ``{"metrics", "best", "steps", "wall_time_s", "profile", ...}``."""
        self._t_start = time.perf_counter()
        if D.is_main():
            atomic_write_json(self.run_dir / "run.json", self._run_record("running"))
        try:
            self._loop()
        except NonFiniteLoss as err:
            if D.is_main():
                atomic_write_json(self.run_dir / "run.json", self._run_record(f"failed: {err}"))
            raise
        return self._finish()

    def _loop(self) -> None:
        total, spe, log_every = self.total_steps, self.steps_per_epoch, self.cfg["train"]["log_interval"]
        bar = tqdm(total=total, initial=self.step, desc=f"{self.meta.get('mode', 'train')} {self.task.name}",
                   disable=not self.progress, dynamic_ncols=True)
        try:
            while self.step < total:
                epoch = self.step // spe
                self._start_epoch(epoch)
                it = iter(self.train_loader)
                for _ in range(self.step - epoch * spe):  # mid-epoch resume: replay up to the checkpoint
                    next(it)
                for batch in it:
                    if self.step >= total:
                        break
                    step = self.step + 1
                    t0 = time.perf_counter()
                    logs = self.train_step(batch, step)  # (it reads the loss: a CUDA device is synchronised)
                    self.meter.add(time.perf_counter() - t0, self.batch)  # (drop_last: every batch is full)
                    self.step = step
                    self.acc["n"] += 1
                    self.acc["loss"] += logs["loss"]
                    self.acc["task_loss"] += logs["task_loss"]
                    if step % log_every == 0 or step == total:
                        self.log.log_step({"step": step, **logs})
                        bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")
                    bar.update(1)
                    self._end_of_step(step)
        finally:
            bar.close()

    def _end_of_step(self, step: int) -> None:
        total = self.total_steps
        shrink = None
        for hook in self.hooks:
            report = hook.after_step(step, final=step == total)
            if report:
                shrink = report
                self._after_edit()
        metrics = None
        if step % self.eval_every == 0 or step == total:
            metrics = self.evaluate()
            self.last_metrics = {"step": step, **metrics}
            self._track_best(step, metrics)
        if metrics is not None or shrink is not None or step % self.steps_per_epoch == 0 or step == total:
            self.log.log_row(self._row(step, metrics, shrink))
            self.acc = self._zero_acc()
        if step % self.ckpt_every == 0 or step == total:
            self._checkpoint()

    def _track_best(self, step: int, metrics: dict) -> None:
        from hrnas.models import spec_of

        name = metrics["main"]
        value = metrics[name]
        if self.progress:
            macs = [row["macs"] for hook in self.hooks if "macs" in (row := hook.row(step))]
            tqdm.write(f"[step {step}/{self.total_steps}] {name} = {value:.4f}"
                       + (f", {macs[-1] / 1e6:.1f} MMACs" if macs else ""))
        if not all(hook.eligible_for_best() for hook in self.hooks):
            return  # e.g. budget mode: the best-validation network among those within the budget
        if self.best is None or not value < self.best["value"]:  # ties: the later (smaller) network
            self.best = {"step": step, "metric": name, "value": value, "arch": spec_of(self.searchable)}

    # ---- end -------------------------------------------------------------------------------------
    def exported_arch(self) -> dict:
        """The architecture this run exports: what a hook chooses (the search: the best-validation one
        under ``search.export: best_val``), else the final one."""
        from hrnas.models import spec_of

        for hook in self.hooks:
            arch = hook.export(self.best)
            if arch is not None:
                return arch
        return spec_of(self.searchable)

    def _run_record(self, status: str, **extra) -> dict:
        return {"status": status, "task": self.task.name, **self.meta, "preset": self.cfg["preset"],
                "world_size": self.world, "device": str(self.device), "versions": versions(),
                "git_commit": git_info()["commit"], "config": self.cfg, "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps, "step": self.step, **extra}

    def _finish(self) -> dict:
        from hrnas.models import PAPER_SIZES, save_arch, spec_of
        from hrnas.profile import profile_export

        arch = self.exported_arch()
        prof = profile_export(arch, PAPER_SIZES[self.task.name])
        wall = round(self.elapsed + self._session(), 2)
        best = None if self.best is None else {k: v for k, v in self.best.items() if k != "arch"}
        metrics = {k: v for k, v in self.last_metrics.items() if k != "step"}
        result = {"metrics": metrics, "best": best, "steps": self.step, "wall_time_s": wall, "profile": prof,
                  "run_dir": str(self.run_dir)}
        if D.is_main():
            save_arch(arch, self.run_dir / "arch.json")
            hook_records = {k: v for hook in self.hooks for k, v in hook.record().items()}
            atomic_write_json(self.run_dir / "run.json", self._run_record(
                "finished", wall_time_s=wall, metrics=metrics, best=best, profile=prof, arch=arch,
                final_arch=spec_of(self.searchable), throughput=self.meter.record(self.device, self.world), **hook_records))
        D.barrier()
        return result

