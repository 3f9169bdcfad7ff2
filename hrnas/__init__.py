"""hrnas: a reference reproduction of HR-NAS (Ding et al., CVPR 2021).

Searching efficient high-resolution networks with lightweight transformers: the super network
(`hrnas.models`), the resource-aware progressive-shrinking search (`hrnas.search`), data
(`hrnas.data`), training (`hrnas.engine`, `hrnas.tasks`), metrics (`hrnas.metrics`) and figures
(`hrnas.viz`).
"""
__version__ = "0.1.0"

TASKS = ("imagenet", "cityscapes", "ade20k", "coco", "kitti")
# Presets every task's recipe has: ``tiny`` and ``smoke`` run on the embedded miniatures (a few CPU
# minutes / seconds), ``paper`` is the paper's recipe on the real data. A task file may declare more.
MINIATURE_PRESETS = ("tiny", "smoke")
PRESETS = ("paper", *MINIATURE_PRESETS)
# Input size (H, W) of each task's network in the paper (params/MACs are reported there; the crops of
# the ``paper`` recipes); kitti: the PointPillars BEV grid of the authors' point-cloud range.
PAPER_SIZES = {"imagenet": (224, 224), "cityscapes": (512, 1024), "ade20k": (512, 512), "coco": (256, 192),
               "kitti": (496, 432)}
