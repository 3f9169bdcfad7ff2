"""Label tables: Cityscapes (cityscapesscripts `labels.py`, docs/datasets.md §3.2) and
ADE20K-150 (mmseg `ADE20KDataset`, §3.3)."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

IGNORE = 255


class CityscapesLabel(NamedTuple):
    name: str
    id: int
    train_id: int
    has_instances: bool
    color: tuple[int, int, int]


# name, id, trainId, hasInstances, colour (official table; license plate id -1 is never drawn)
CITYSCAPES_LABELS = tuple(CityscapesLabel(*row) for row in (
    ("unlabeled", 0, IGNORE, False, (0, 0, 0)),
    ("ego vehicle", 1, IGNORE, False, (0, 0, 0)),
    ("rectification border", 2, IGNORE, False, (0, 0, 0)),
    ("out of roi", 3, IGNORE, False, (0, 0, 0)),
    ("static", 4, IGNORE, False, (0, 0, 0)),
    ("dynamic", 5, IGNORE, False, (111, 74, 0)),
    ("ground", 6, IGNORE, False, (81, 0, 81)),
    ("road", 7, 0, False, (128, 64, 128)),
    ("sidewalk", 8, 1, False, (244, 35, 232)),
    ("parking", 9, IGNORE, False, (250, 170, 160)),
    ("rail track", 10, IGNORE, False, (230, 150, 140)),
    ("building", 11, 2, False, (70, 70, 70)),
    ("wall", 12, 3, False, (102, 102, 156)),
    ("fence", 13, 4, False, (190, 153, 153)),
    ("guard rail", 14, IGNORE, False, (180, 165, 180)),
    ("bridge", 15, IGNORE, False, (150, 100, 100)),
    ("tunnel", 16, IGNORE, False, (150, 120, 90)),
    ("pole", 17, 5, False, (153, 153, 153)),
    ("polegroup", 18, IGNORE, False, (153, 153, 153)),
    ("traffic light", 19, 6, False, (250, 170, 30)),
    ("traffic sign", 20, 7, False, (220, 220, 0)),
    ("vegetation", 21, 8, False, (107, 142, 35)),
    ("terrain", 22, 9, False, (152, 251, 152)),
    ("sky", 23, 10, False, (70, 130, 180)),
    ("person", 24, 11, True, (220, 20, 60)),
    ("rider", 25, 12, True, (255, 0, 0)),
    ("car", 26, 13, True, (0, 0, 142)),
    ("truck", 27, 14, True, (0, 0, 70)),
    ("bus", 28, 15, True, (0, 60, 100)),
    ("caravan", 29, IGNORE, True, (0, 0, 90)),
    ("trailer", 30, IGNORE, True, (0, 0, 110)),
    ("train", 31, 16, True, (0, 80, 100)),
    ("motorcycle", 32, 17, True, (0, 0, 230)),
    ("bicycle", 33, 18, True, (119, 11, 32)),
))
CITYSCAPES_BY_NAME = {lab.name: lab for lab in CITYSCAPES_LABELS}
CITYSCAPES_NUM_CLASSES = 19
CITYSCAPES_CLASSES = tuple(lab.name for lab in sorted(
    (lab for lab in CITYSCAPES_LABELS if lab.train_id != IGNORE), key=lambda lab: lab.train_id))
CITYSCAPES_VALID_IDS = np.array([lab.id for lab in CITYSCAPES_LABELS])
CITYSCAPES_VALID_TRAIN_IDS = np.array(list(range(CITYSCAPES_NUM_CLASSES)) + [IGNORE])


def cityscapes_id_to_train_id_lut() -> np.ndarray:
    """256-entry uint8 look-up table labelId -> trainId (255 for ignored and unknown ids)."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for lab in CITYSCAPES_LABELS:
        lut[lab.id] = lab.train_id
    return lut


ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair",
    "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box",
    "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet",
    "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower",
    "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle",
    "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle",
    "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light",
    "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower",
    "radiator", "glass", "clock", "flag",
)
ADE20K_NUM_CLASSES = 150
assert len(ADE20K_CLASSES) == ADE20K_NUM_CLASSES


def ade20k_id(name: str) -> int:
    """1-based annotation value of an ADE20K class name (0 is 'other')."""
    return [c.strip() for c in ADE20K_CLASSES].index(name) + 1
