"""hrnas: a reference reproduction of HR-NAS (Ding et al., CVPR 2021).

Searching efficient high-resolution networks with lightweight transformers: the super network
(`hrnas.models`), the resource-aware progressive-shrinking search (`hrnas.search`), data
(`hrnas.data`), training (`hrnas.engine`, `hrnas.tasks`), metrics (`hrnas.metrics`) and figures
(`hrnas.viz`).
"""
__version__ = "0.1.0"

TASKS = ("imagenet", "cityscapes", "ade20k", "coco", "kitti")
