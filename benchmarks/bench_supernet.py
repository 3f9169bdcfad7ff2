"""Speed and memory of one training step of the Cityscapes super network (issue #2 benchmark).

Forward + CE loss + backward, train mode, random input/labels, the logits upsampled to the label size as
in the authors' loss. Each variant runs in its own process (so peak RSS is its own):

    fp32-nchw   float32, NCHW (the layout the authors' code uses) — the baseline
    fp32-cl     float32, channels_last
    fp32-cl-ckpt  float32, channels_last, searching blocks recomputed in backward (train.grad_checkpointing)
    bf16-cl     bfloat16 autocast (AMX on recent Xeons), channels_last

Prints, per variant: median step time of ``--runs`` timed steps (after one warm-up), peak RSS, achieved
GFLOP/s (true MACs × 3 for fwd+bwd × 2) and a same-dtype GEMM's GFLOP/s measured in the same process, and
the speed-up against the baseline run in the same invocation. Usage::

    OMP_NUM_THREADS=2 python benchmarks/bench_supernet.py                   # 512×1024, batch 2, 5 runs
    OMP_NUM_THREADS=2 python benchmarks/bench_supernet.py --size 128x256 --runs 3
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = ("fp32-nchw", "fp32-cl", "fp32-cl-ckpt", "bf16-cl")


def cpu_has_bf16_units() -> bool:
    """AMX or AVX512-BF16: without them bf16 autocast on the CPU is emulated and far slower than fp32."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def gemm_gflops(dtype, n: int = 2048, reps: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def run_variant(variant: str, size: tuple[int, int], batch: int, runs: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    from hrnas.models import build_model
    from hrnas.profile import profile

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model("cityscapes").train()
    macs = profile(model, size).macs
    channels_last = "-cl" in variant
    model.set_grad_checkpointing(variant.endswith("-ckpt"))
    bf16 = variant.startswith("bf16")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 3, *size).contiguous(memory_format=fmt)
    y = torch.randint(0, 19, (batch, *size))

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits.float(), y, ignore_index=255)
        loss.backward()
        return loss.item()

    step()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    return {"variant": variant, "size": f"{size[0]}x{size[1]}", "batch": batch, "threads": threads,
            "times_s": [round(t, 3) for t in times], "median_s": round(median, 3),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
            "achieved_gflops": round(6 * macs * batch / median / 1e9, 1),
            "gemm_gflops": round(gemm_gflops(torch.bfloat16 if bf16 else torch.float32), 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="512x1024")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--force-bf16", action="store_true", help="run bf16 even without AMX/AVX512-BF16")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.split("x"))
    if args.child:
        print(json.dumps(run_variant(args.child, (h, w), args.batch, args.runs, args.threads)))
        return 0
    results = []
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            p.error(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        if variant.startswith("bf16") and not (args.force_bf16 or cpu_has_bf16_units()):
            print(f"skipping {variant}: this CPU has no AMX/AVX512-BF16 units (use --force-bf16)", flush=True)
            continue
        out = subprocess.run([sys.executable, __file__, "--child", variant, "--size", args.size, "--batch",
                              str(args.batch), "--runs", str(args.runs), "--threads", str(args.threads)],
                             check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    base = next((r for r in results if r["variant"] == "fp32-nchw"), results[0])
    print(f"\n{'variant':<13}{'median s':>10}{'speed-up':>10}{'peak GiB':>10}{'GFLOP/s':>10}{'GEMM GFLOP/s':>14}")
    for r in results:
        print(f"{r['variant']:<13}{r['median_s']:>10.2f}{base['median_s'] / r['median_s']:>9.2f}x"
              f"{r['peak_rss_gib']:>10.2f}{r['achieved_gflops']:>10.1f}{r['gemm_gflops']:>14.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
