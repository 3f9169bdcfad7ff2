"""What the task notebooks call, so that each keeps only its own story (its data, metric and figures).

A task notebook (01-05) runs the same sequence on its dataset; `TaskRun` is that sequence:

    run = TaskRun.open("02_cityscapes_segmentation", "cityscapes", preset=..., out_dir=..., figures_dir=...)
    run.search()            # a fresh search in <out_dir>/<name>/search (or a finished identical one, `reuse`)
    run.retrain()           # optional: the searched architecture from scratch, in <out_dir>/<name>/retrain
    run.evaluate(names)     # `hrnas eval` of the final run: our metrics (`run.ours`), the evaluated network
                            # (`run.evaluated`) and, at tiny, the range several seeds gave
    run.cost_table()        # params / MACs of super network and searched network, both conventions
    run.results_table()     # ours next to the published numbers, saved as CSV / Markdown / LaTeX
    run.record(key)         # the numbers `hrnas reproduce` collects

The samplers below turn a dataset or an evaluated run into what the figures of `hrnas.viz` draw; the
task notebooks and 20_visualizations share them: `segmentation_samples` / `segmentation_predictions`,
`pose_samples` / `pose_predictions`, `kitti_frame` / `kitti_detections`, `classification_samples` /
`classify` / `class_names`.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hrnas.errors import UserError
from hrnas.tasks.runner import data_label, evaluate_checkpoint, export_arch, resolve_data_root, run_experiment

RESULT_COLUMNS = ["method", "metric", "value", "input_size", "params_M", "macs_G", "split", "confidence",
                  "source", "note"]


def read_jsonl(path) -> list[dict]:
    """The rows of a JSON-lines log (``steps.jsonl``, ``metrics.jsonl``); [] when the file is missing."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{path} line {n}: not JSON ({err})") from None
    return rows


@dataclass
class TaskRun:
    """One task notebook's search, optional retraining and evaluation (see the module docstring)."""

    name: str
    task: str
    preset: str
    out_dir: Path
    figures_dir: Path
    data_root: Path
    marker: dict | None
    settings: list[str]
    progress: bool = True
    search_result: dict | None = None
    search_dir: Path | None = None
    final_dir: Path | None = None
    arch_file: Path | None = None
    retrained: bool = False
    evaluation: dict | None = None
    evaluated: object | None = None  # hrnas.tasks.runner.LoadedRun: the network as evaluated
    ours: dict | None = None  # our metrics under their published names
    _hrnas_cost: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, name: str, task: str, *, preset: str, out_dir, figures_dir, data_root=None, seed: int = 1995,
             overrides=(), progress: bool = True) -> "TaskRun":
        """Resolve the dataset (``data_root``, else the embedded synthetic one) and the run's settings
        (``train.seed=<seed>`` followed by ``overrides``)."""
        from hrnas.data.synthetic import read_marker

        root = resolve_data_root(task, preset, data_root)
        return cls(name=name, task=task, preset=preset, out_dir=Path(out_dir), figures_dir=Path(figures_dir),
                   data_root=root, marker=read_marker(root), settings=[f"train.seed={seed}", *overrides],
                   progress=progress)

    # ---- provenance --------------------------------------------------------------------------
    @property
    def synthetic(self) -> bool:
        return self.marker is not None

    @property
    def label(self) -> str:
        return data_label(self.synthetic, self.preset)

    @property
    def run_root(self) -> Path:
        return self.out_dir / self.name

    def figure(self, what: str) -> Path:
        """``<figures_dir>/<name>_<what>_<preset>.png``."""
        return self.figures_dir / f"{self.name}_{what}_{self.preset}.png"

    def describe_data(self) -> str:
        text = f"{self.task} data: {self.data_root}\n{self.label}"
        return text + (f"; generator {self.marker}" if self.synthetic else "")

    def config(self) -> dict:
        from hrnas.engine.config import load_config

        return load_config(self.task, self.preset, self.settings)

    def val_dataset(self):
        """The validation split as the run's recipe reads it (the evaluation's transform, no augmentation)."""
        from hrnas.tasks import get_task

        return get_task(self.config()).val_dataset(self.data_root)

    # ---- search, retraining, evaluation --------------------------------------------------------
    def search(self, reuse=()) -> dict:
        """A fresh search in ``<out_dir>/<name>/search`` (removed first), unless a run in ``reuse`` finished
        the very same search; the architecture it selected is exported to ``<out_dir>/<name>/arch.json``."""
        search_dir = self.run_root / "search"
        shutil.rmtree(search_dir, ignore_errors=True)  # a notebook run starts a fresh search
        result = run_experiment(self.task, "search", out=search_dir, data_root=self.data_root, preset=self.preset,
                                overrides=self.settings, progress=self.progress, reuse=list(reuse))
        self.search_result = result
        self.search_dir = self.final_dir = Path(result["run_dir"])
        self.arch_file = export_arch(self.search_dir, self.run_root / "arch.json")
        return result

    def _require(self, attr: str, step: str):
        value = getattr(self, attr)
        if value is None:
            raise UserError(f"{self.name}: call {step} first")
        return value

    def describe_search(self) -> str:
        r = self._require("search_result", "search()")
        reused = " (reused: the same recipe, data and seed had already run there)" if r.get("reused") else ""
        wall = r.get("wall_time_s")
        return f"search run: {self.search_dir}{reused}\n{r['steps']} steps" + (f" in {wall:.0f} s" if wall is not None else "")

    def steps(self) -> list[dict]:
        """Rows of the search's ``steps.jsonl`` (every ``train.log_interval`` steps)."""
        return read_jsonl(self._require("search_dir", "search()") / "steps.jsonl")

    def history(self) -> list[dict]:
        """Rows of the search's ``metrics.jsonl`` (per epoch and per evaluation)."""
        return read_jsonl(self._require("search_dir", "search()") / "metrics.jsonl")

    def plot_search(self):
        """Task loss, L1 penalty, MACs and the validation metric of the search, saved as ``search_curves``;
        the title says how many steps it took and whether an identical earlier run was reused."""
        from hrnas.viz.plots import search_curves

        r = self._require("search_result", "search()")
        wall = r.get("wall_time_s")
        took = f"{r['steps']} steps" + (f", {wall:.0f} s" if wall is not None else "") + \
            (", reused" if r.get("reused") else "")
        return search_curves(self.steps(), self.history(), path=self.figure("search_curves"),
                             title=f"HR-NAS search, {self.task} ({self.label}; {took})")

    def retrain(self) -> dict:
        """Train the searched architecture from scratch in ``<out_dir>/<name>/retrain``; it becomes the final run."""
        arch_file = self._require("arch_file", "search()")
        final = self.run_root / "retrain"
        shutil.rmtree(final, ignore_errors=True)
        result = run_experiment(self.task, "train", out=final, data_root=self.data_root, preset=self.preset,
                                overrides=self.settings, arch=arch_file, progress=self.progress)
        self.final_dir, self.retrained = final, True
        return result

    def evaluate(self, names: dict, scale: float = 1.0, key: str | None = None, unit: str = ""):
        """``hrnas eval`` of the final run (its latest checkpoint on the val split).

        Keeps our metrics under their published names as ``self.ours`` (``{published: scale * evaluation[ours]}``
        for those the evaluation has), the whole evaluation as ``self.evaluation``, the evaluated network (BN
        re-calibrated, eval mode) as ``self.evaluated`` for the prediction figures; its outputs (result files)
        are in ``self.eval_dir``. Prints which network was evaluated and, for the ``key`` metric, the line of
        :func:`hrnas.expected.describe_expected` (the range several seeds gave at preset tiny, or that there
        is no such table). Returns ``self.ours`` as a labelled table (a pandas Series, rounded to 2 decimals).
        """
        import pandas as pd

        from hrnas.expected import describe_expected

        final = self._require("final_dir", "search()")
        if key is not None and key not in names.values():
            raise UserError(f"key: {key!r} is not among our metrics ({', '.join(names.values())})")
        self.evaluation, self.evaluated = evaluate_checkpoint(self.task, final, data_root=self.data_root,
                                                              return_model=True)
        self.ours = {published: scale * self.evaluation[k] for k, published in names.items() if k in self.evaluation}
        print(self.describe_evaluation())
        if key is not None:
            if key not in self.ours:
                raise UserError(f"key: the evaluation has no value for {key!r} ({', '.join(self.evaluation)})")
            print(describe_expected(self.task, key, self.ours[key], self.preset, unit=unit))
        return pd.Series(self.ours, name=f"ours ({self.label})").round(2)

    @property
    def eval_dir(self) -> Path:
        """Where the evaluation wrote its outputs (KITTI result files, COCO keypoint results)."""
        return Path(self._require("evaluation", "evaluate()")["checkpoint"]).parent / "eval"

    def describe_evaluation(self) -> str:
        ev = self._require("evaluation", "evaluate()")
        network = "the retrained network" if self.retrained else "the searched network (no retraining)"
        return f"evaluated {network}: {ev['checkpoint']} (step {ev['step']})"

    # ---- architecture and cost ---------------------------------------------------------------
    def architecture(self) -> tuple[dict, dict]:
        """(searched architecture spec, super network spec)."""
        from hrnas.models import build_model, load_arch, spec_of

        searched = load_arch(self._require("arch_file", "search()"))
        return searched, spec_of(build_model(self.task, **searched["model"]))

    def show_architecture(self, rows: int = 10):
        """Print the summary, draw the searched architecture over the super network (``searched_architecture``)
        and return the first ``rows`` rows of the per-block table."""
        from hrnas.viz import arch_summary, arch_table, draw_architecture

        searched, supernet = self.architecture()
        print(arch_summary(searched, supernet=supernet))
        draw_architecture(searched, path=self.figure("searched_architecture"),
                          title=f"Searched architecture, {self.task} ({self.label})", supernet=supernet)
        return arch_table(searched, supernet=supernet).head(rows)

    def hrnas_cost(self) -> dict:
        """Profiles (``hrnas`` convention, the paper's "FLOPs") of the super and searched networks at the
        paper's input size of the task."""
        if not self._hrnas_cost:
            from hrnas.models import PAPER_SIZES, build_model
            from hrnas.profile import profile

            searched, _ = self.architecture()
            size = PAPER_SIZES[self.task]
            self._hrnas_cost = {"super network": profile(build_model(self.task, **searched["model"]), size,
                                                         convention="hrnas"),
                                "searched": profile(build_model(arch=searched), size, convention="hrnas")}
        return self._hrnas_cost

    def cost_table(self):
        """Params (M) and MACs (G) of the super network and the searched one at the paper's input size:
        ``true`` (every multiply-add, counted by the run) and ``hrnas`` (the authors' profiler)."""
        import pandas as pd

        from hrnas.models import PAPER_SIZES

        run_cost = self._require("search_result", "search()")["profile"]
        hr = self.hrnas_cost()
        size = PAPER_SIZES[self.task]
        print(f"at {size[0]}x{size[1]}; network searched on {self.label}")
        return pd.DataFrame({
            "params (M), true": [run_cost["supernet_params"] / 1e6, run_cost["params"] / 1e6],
            "MACs (G), true": [run_cost["supernet_macs"] / 1e9, run_cost["macs"] / 1e9],
            "params (M), hrnas": [p.params / 1e6 for p in hr.values()],
            "MACs (G), hrnas": [p.macs / 1e9 for p in hr.values()],
        }, index=list(hr)).round(3)

    # ---- results ------------------------------------------------------------------------------
    def results_table(self, float_format: str = ".2f"):
        """Our metrics (``self.ours``) next to the published rows of the same metrics (``reference_results``),
        saved as ``<name>_results_<preset>.csv/.md/.tex``; returned without the source and note columns."""
        import pandas as pd

        from hrnas.models import PAPER_SIZES
        from hrnas.viz.tables import reference_results, save_table

        ours = self._require("ours", "evaluate()")
        size = PAPER_SIZES[self.task]
        searched = self.hrnas_cost()["searched"]
        ours_rows = pd.DataFrame({
            "method": f"HR-NAS, ours ({self.label}{', retrained' if self.retrained else ''})", "metric": list(ours),
            "value": list(ours.values()), "input_size": f"{size[0]}x{size[1]} (cost)",
            "params_M": searched.params / 1e6, "macs_G": searched.macs / 1e9, "split": "val",
            "confidence": "computed in this notebook", "source": self.name,
            "note": "MACs in the paper's (hrnas) convention"})
        published = reference_results(self.task)
        table = pd.concat([ours_rows, published[published["metric"].isin(list(ours))]], ignore_index=True)
        table = table[RESULT_COLUMNS]
        save_table(table, f"{self.name}_results_{self.preset}", self.figures_dir, float_format=float_format,
                   caption=f"{self.task}: ours ({self.label}) next to published results (not ours; see confidence "
                           f"and source)")
        return table.drop(columns=["source", "note"])

    def metrics(self, extra: dict | None = None) -> dict:
        """The record of a task notebook: provenance, our metrics, ``extra``, searched cost, search effort."""
        ours = self._require("ours", "evaluate()")
        searched = self.hrnas_cost()["searched"]
        search = self._require("search_result", "search()")
        return {"preset": self.preset, "synthetic": self.synthetic, "retrained": self.retrained, **ours,
                **(extra or {}), "searched_params_M": searched.params / 1e6, "searched_MACs_G": searched.macs / 1e9,
                "search_steps": search["steps"], "search_wall_time_s": search["wall_time_s"]}

    def record(self, key, extra: dict | None = None) -> Path:
        """``record_metrics`` of :meth:`metrics` into ``<out_dir>/<name>.metrics.json``; ``key``: the metrics
        of the batch summary."""
        from hrnas.reproduce import record_metrics

        return record_metrics(self.out_dir, self.name, self.metrics(extra), key=key)


# ============================================================================================
# samplers: datasets and evaluated runs -> arrays the figures draw
def class_iou(iou, class_names, scale: float = 100.0):
    """Per-class IoU (``evaluation["IoU"]``, one value per class, NaN for a class absent from both the
    labels and the predictions) as a table sorted from best to worst, absent classes left out."""
    import pandas as pd

    values = np.asarray(iou, dtype=np.float64)
    if values.shape != (len(class_names),):
        raise UserError(f"iou: {values.size} values for {len(class_names)} classes")
    table = pd.DataFrame({"class": [str(c).strip() for c in class_names], "IoU (%)": scale * values})
    return table.dropna().sort_values("IoU (%)", ascending=False, kind="stable").reset_index(drop=True)


def _device(net):
    return next(net.parameters()).device


def _at_label_size(image, label) -> np.ndarray:
    """The de-normalised image (HxWx3 uint8) at the label's size: the evaluation resizes only the image
    to the test scale and keeps the label at its original size (mmseg's protocol)."""
    from PIL import Image

    from hrnas.viz.seg import denormalize

    rgb = denormalize(image)
    h, w = np.asarray(label).shape[-2:]
    if rgb.shape[:2] != (h, w):
        rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
    return rgb


def segmentation_samples(dataset, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The first ``n`` samples of a segmentation dataset as (HxWx3 uint8 images, HxW train-id labels),
    the image at the label's size."""
    images, labels = [], []
    for i in range(min(n, len(dataset))):
        image, label = dataset[i]
        images.append(_at_label_size(image, label))
        labels.append(np.asarray(label))
    return images, labels


def segmentation_predictions(run, n: int):
    """(images, predictions, ground truths) of the first ``n`` val images: the argmax of ``run.task.predict``
    (the recipe's test mode) at the label's resolution, for ``run`` a LoadedRun."""
    import torch

    val = run.task.val_dataset(run.data_root)
    images, preds, gts = [], [], []
    with torch.no_grad():
        for i in range(min(n, len(val))):
            image, gt = val[i]
            scores = run.task.predict(run.net, image[None].to(_device(run.net)), size=gt.shape[-2:])
            preds.append(scores.argmax(1)[0].cpu().numpy())
            images.append(_at_label_size(image, gt))
            gts.append(np.asarray(gt))
    return images, preds, gts


def _coco_people(coco, image_id: int) -> list[np.ndarray]:
    anns = [a for a in coco.imgToAnns.get(image_id, []) if a.get("num_keypoints", 1) > 0 and max(a["keypoints"]) > 0]
    return [np.reshape(np.asarray(a["keypoints"], dtype=np.float64), (17, 3)) for a in anns]


def _coco_image(dataset, image_id: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(dataset.image_dir / dataset.coco.imgs[image_id]["file_name"]).convert("RGB"))


def pose_samples(dataset, n: int):
    """(images, ground-truth people per image, image ids) of the first ``n`` images with labelled people
    of a COCO keypoints dataset; a person is a (17, 3) array of (x, y, visibility)."""
    ids = [i for i in sorted(dataset.coco.imgs) if _coco_people(dataset.coco, i)][:n]
    return [_coco_image(dataset, i) for i in ids], [_coco_people(dataset.coco, i) for i in ids], ids


def pose_predictions(results_file, dataset, n: int):
    """(images, predicted people, ground-truth people, image ids) of the first ``n`` images of a COCO
    keypoint results file (what the evaluation wrote: (x, y, confidence) per keypoint)."""
    path = Path(results_file)
    if not path.is_file():
        raise UserError(f"{path}: no keypoint results file (the evaluation writes keypoints_val_results.json)")
    results = json.loads(path.read_text())
    ids = sorted({r["image_id"] for r in results})[:n]
    preds = [[np.reshape(np.asarray(r["keypoints"], dtype=np.float64), (17, 3)) for r in results if r["image_id"] == i]
             for i in ids]
    return ([_coco_image(dataset, i) for i in ids], preds, [_coco_people(dataset.coco, i) for i in ids], ids)


def kitti_frame(dataset, index: int = 0) -> dict:
    """Sample ``index`` of a KITTI dataset (points, gt_boxes, gt_labels, frame_id, calib) plus its camera
    image (``image``, HxWx3 uint8 from ``image_2``)."""
    from PIL import Image

    sample = dataset[index]
    image = np.asarray(Image.open(dataset.base / "image_2" / f"{sample['frame_id']}.png").convert("RGB"))
    return {**sample, "image": image}


def kitti_detections(results_dir, frame: dict) -> dict:
    """The detections the evaluation wrote for ``frame`` (``<results_dir>/<frame_id>.txt``: KITTI result
    lines in the camera frame, after the detector's NMS and score threshold), back in the LiDAR frame:
    ``boxes`` (K, 7), ``scores`` (K,), ``labels`` (K,) 1 Car, 2 Pedestrian, 3 Cyclist."""
    from hrnas.data.kitti import CLASSES, camera_boxes_to_lidar
    from hrnas.metrics.kitti import read_result_file

    path = Path(results_dir) / f"{frame['frame_id']}.txt"
    if not path.is_file():
        raise UserError(f"{path}: no KITTI result file for frame {frame['frame_id']} (the evaluation writes "
                        f"kitti_results/<frame>.txt)")
    dets = read_result_file(path)
    keep = np.array([n in CLASSES for n in dets["name"]], dtype=bool)
    cam = np.column_stack([dets["location"], dets["dimensions"], dets["rotation_y"]])[keep]  # x y z h w l ry
    return {"boxes": camera_boxes_to_lidar(cam, frame["calib"]), "scores": dets["score"][keep],
            "labels": np.array([CLASSES.index(n) + 1 for n in dets["name"][keep]], dtype=np.int64)}


def class_names(data_root, classes) -> list[str]:
    """Readable names of ImageNet classes (wnids, e.g. ``dataset.classes``): the first name of each wnid in
    ``<data_root>/LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca`` -> ``tench``), else the wnid."""
    mapping = Path(data_root) / "LOC_synset_mapping.txt"
    names = {}
    if mapping.is_file():
        for line in mapping.read_text().splitlines():
            wnid, _, rest = line.strip().partition(" ")
            if wnid:
                names[wnid] = rest.split(",")[0].strip() or wnid
    return [names.get(c, c) for c in classes]


def classification_samples(dataset, n: int) -> tuple[list[int], list[np.ndarray], list[int]]:
    """(indices, images as stored on disk (HxWx3 uint8), labels) of ``n`` samples, one class after another."""
    from PIL import Image

    by_class: dict[int, list[int]] = {}
    for i, (_, target) in enumerate(dataset.samples):
        by_class.setdefault(target, []).append(i)
    order, depth = [], 0
    while len(order) < min(n, len(dataset.samples)):
        order += [idx[depth] for _, idx in sorted(by_class.items()) if depth < len(idx)][: n - len(order)]
        depth += 1
    images = [np.asarray(Image.open(dataset.samples[i][0]).convert("RGB")) for i in order]
    return order, images, [dataset.samples[i][1] for i in order]


def classify(run, dataset, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, C), labels (N,)) of every sample of ``dataset`` under ``run.net`` (softmax)."""
    import torch

    probs, labels = [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with torch.no_grad():
        for images, target in loader:
            probs.append(run.net(images.to(_device(run.net))).float().softmax(1).cpu().numpy())
            labels.append(np.asarray(target))
    return np.concatenate(probs), np.concatenate(labels).astype(np.int64)


__all__ = ["TaskRun", "read_jsonl", "data_label", "class_iou", "segmentation_samples", "segmentation_predictions", "pose_samples",
           "pose_predictions", "kitti_frame", "kitti_detections", "class_names", "classification_samples",
           "classify"]
