"""A run directory's logs: step losses, epoch and evaluation rows, kept consistent with checkpoints."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from hrnas.io import atomic_write_text, json_default

__all__ = ["RunLog", "StepMeter"]


class RunLog:
    """The run directory's logs: ``steps.jsonl`` (step losses), ``metrics.jsonl`` + ``metrics.csv``
    (epoch / evaluation rows). ``truncate(step)`` drops rows written after a checkpoint's step
    (resume); the CSV is regenerated from the JSONL (atomically) after every row."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.dir, self.enabled = Path(run_dir), enabled
        self.steps, self.metrics, self.csv = (self.dir / "steps.jsonl", self.dir / "metrics.jsonl",
                                              self.dir / "metrics.csv")

    def truncate(self, step: int) -> None:
        if not self.enabled:
            return
        for path in (self.steps, self.metrics):
            rows = [r for r in self._read(path) if r["step"] <= step]
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
        self._write_csv()

    @staticmethod
    def _read(path: Path) -> list[dict]:
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def log_step(self, row: dict) -> None:
        self._append(self.steps, row)

    def log_row(self, row: dict) -> None:
        self._append(self.metrics, row)
        self._write_csv()

    def _append(self, path: Path, row: dict) -> None:
        if self.enabled:
            with open(path, "a") as fh:
                fh.write(json.dumps(row, default=json_default) + "\n")

    def _write_csv(self) -> None:
        rows = self._read(self.metrics)
        cols: list[str] = []
        for r in rows:
            cols += [k for k, v in r.items() if k not in cols and not isinstance(v, (list, dict))]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.csv, buf.getvalue())


class StepMeter:
    """Time and images of this session's training steps, for ``run.json``'s ``throughput``."""

    def __init__(self):
        self.seconds, self.steps, self.images = 0.0, 0, 0

    def add(self, seconds: float, images: int) -> None:
        self.seconds, self.steps, self.images = self.seconds + seconds, self.steps + 1, self.images + images

    def record(self, device: torch.device, world: int) -> dict:
        """Training images/s of all processes and this process's peak memory."""
        import resource

        cuda = device.type == "cuda"
        peak = (torch.cuda.max_memory_allocated(device) if cuda else
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        return {"train_images_per_s": round(self.images * world / self.seconds, 3) if self.seconds else None,
                "train_steps_timed": self.steps, "peak_memory_gib": round(peak / 2 ** 30, 3),
                "peak_memory_kind": "cuda max_memory_allocated" if cuda else "process max RSS"}
