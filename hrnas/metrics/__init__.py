"""Evaluation metrics (docs/metrics-and-peers.md §2.2, §3, §4; docs/authors-code.md §5).

- ``classification``: top-k hits and an all-reducible ``ClassificationMeter`` (top-1 / top-5 %).
- ``segmentation``: dataset-level confusion histogram -> mIoU / mAcc / aAcc (mmseg definition).
- ``coco_keypoints``: top-down heatmap decoding, flip test, OKS-NMS, COCO keypoint AP (pycocotools).
- ``box_ops``: rotated BEV IoU, 3D IoU and 2D box overlap (numpy or torch inputs).
- ``kitti``: KITTI label/result I/O and the official KITTI AP protocol on the CPU (R11, R40, AOS).
"""
