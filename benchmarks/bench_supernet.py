"""Speed and memory of one training step of the Cityscapes super network, variants side by side.

Forward + CE loss + backward, train mode, random input/labels, the logits upsampled to the label size as
in the authors' loss. A variant is ``<dtype>-<layout>[-plain|-fast][-ckpt][-compile]``:

    dtype     fp32 | bf16 (autocast; CPU only with AMX/AVX512-BF16) | fp16 (autocast + GradScaler, CUDA)
    layout    nchw | cl (channels_last)
    -plain    the plain computation of the searching blocks (one expand tensor sliced per path, stock
              convolutions; ``HRNet.set_fast_paths(False)``). ``fp32-nchw-plain`` is the baseline: the
              authors' computation and layout, at their code's speed on the CPU
    -fast     the fast paths in every block (``HRNet.set_fast_paths(True)``)
    -ckpt     searching blocks recomputed in backward (``train.grad_checkpointing``)
    -compile  regional ``torch.compile``: each searching block's kernel paths compiled (one code object
              reused by every block); the compile time is printed

Without either flag each block takes the way that is faster for its size (``train.fast_paths: auto``, the
default; fast paths = per-path expand outputs, strip-wise depthwise weight gradients, ``hrnas.models.depthwise``). Every variant runs in its own process (so peak
memory is its own) with a warm-up step; ``--rounds`` repeats the whole list in alternating order
(A B C, C B A, ...) so that the variants share the machine's load alike, and the median of all timed
steps is reported with the speed-up against the first variant. ``--profile`` adds one profiled step
per variant and prints where the time goes (conv forward/backward by kind: 1×1, depthwise k×k, other;
BN; ReLU; copies/cat/pad; the rest).

    OMP_NUM_THREADS=2 python benchmarks/bench_supernet.py                       # 512×1024, batch 2
    python benchmarks/bench_supernet.py --size 256x512 --rounds 3 --profile
    python benchmarks/bench_supernet.py --device cuda --variants fp32-cl,bf16-cl,fp16-cl --cudnn-benchmark

On CUDA, ``--cudnn-benchmark`` sets ``torch.backends.cudnn.benchmark`` and ``--sync-bn`` converts the
BNs to SyncBatchNorm in a one-process group (PyTorch then normalises like BatchNorm: the cost of the
all-reduce needs several GPUs). ``--json PATH`` writes every result.
"""
from __future__ import annotations

import argparse
import collections
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

DEFAULT_VARIANTS = ("fp32-nchw-plain", "fp32-cl-plain", "fp32-cl", "fp32-cl-ckpt")
DTYPES, LAYOUTS, FLAGS = ("fp32", "bf16", "fp16"), ("nchw", "cl"), ("plain", "fast", "ckpt", "compile")


def parse_variant(name: str) -> dict:
    """``fp32-cl-ckpt`` → {"dtype": "fp32", "layout": "cl", "plain": False, "fast": False, "ckpt": True, ...}."""
    parts = name.split("-")
    if (len(parts) < 2 or parts[0] not in DTYPES or parts[1] not in LAYOUTS or any(f not in FLAGS for f in parts[2:])
            or {"plain", "fast"} <= set(parts[2:])):
        raise ValueError(f"variant {name!r}: expected <{'|'.join(DTYPES)}>-<{'|'.join(LAYOUTS)}>"
                         + "".join(f"[-{f}]" for f in FLAGS))
    return {"dtype": parts[0], "layout": parts[1], **{f: f in parts[2:] for f in FLAGS}}


def cpu_has_bf16_units() -> bool:
    """AMX or AVX512-BF16: without them bf16 autocast on the CPU is emulated and far slower than fp32."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def conv_kind(weight_shape) -> str:
    if len(weight_shape) != 4:
        return "other"
    if weight_shape[2] == weight_shape[3] == 1:
        return "1x1"
    if weight_shape[1] == 1:  # one input channel per group; strips of a k×k kernel keep its height k
        return f"depthwise {weight_shape[2]}x{weight_shape[2]}"
    return "other"


COPY_OPS = {"aten::copy_", "aten::cat", "aten::clone", "aten::contiguous", "aten::constant_pad_nd", "aten::pad",
            "aten::_to_copy", "aten::to"}
RELU_OPS = {"aten::relu", "aten::relu_", "aten::threshold_backward", "aten::clamp_min_"}


def profile_split(events) -> dict[str, float]:
    """Seconds per category of one profiled step: the inclusive time of each top-level aten op (one
    whose parent is not an aten op), so that nothing is counted twice."""
    cats = collections.Counter()
    for e in events:
        if not e.name.startswith("aten::") or (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::")):
            continue
        seconds, shapes = e.cpu_time_total / 1e6, e.input_shapes or []
        if e.name in ("aten::conv2d", "aten::convolution") and len(shapes) > 1:
            cats[f"conv {conv_kind(shapes[1])} fwd"] += seconds
        elif e.name == "aten::convolution_backward" and len(shapes) > 2:
            cats[f"conv {conv_kind(shapes[2])} bwd"] += seconds
        elif "batch_norm" in e.name:
            cats["BN bwd" if "backward" in e.name else "BN fwd"] += seconds
        elif e.name in RELU_OPS:
            cats["ReLU fwd+bwd"] += seconds
        elif e.name in COPY_OPS:
            cats["copies/cat/pad"] += seconds
        else:
            cats["other"] += seconds
    return dict(cats)


def gemm_gflops(dtype, device, n: int = 2048, reps: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def compile_blocks(model) -> None:
    """Regional compilation: every searching block's ``conv_features`` through ``torch.compile``."""
    import torch

    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    for _, block in model.searching_blocks():
        if block.expand is not None:
            block.conv_features = torch.compile(block.conv_features, dynamic=True)


def run_variant(variant: str, size: tuple[int, int], batch: int, steps: int, threads: int, device_name: str,
                profile_step: bool, cudnn_benchmark: bool, sync_bn: bool) -> dict:
    import torch
    import torch.nn.functional as F

    from hrnas.models import build_model
    from hrnas.profile import profile

    v = parse_variant(variant)
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.manual_seed(0)
    model = build_model("cityscapes").train()
    macs = profile(model, size).macs
    model.set_fast_paths(False if v["plain"] else True if v["fast"] else "auto")
    model.set_grad_checkpointing(v["ckpt"])
    if sync_bn:
        import os

        import torch.distributed as dist

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29517")
        dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    fmt = torch.channels_last if v["layout"] == "cl" else torch.contiguous_format
    model = model.to(device).to(memory_format=fmt)
    if v["compile"]:
        compile_blocks(model)
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[v["dtype"]]
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    x = torch.randn(batch, 3, *size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 19, (batch, *size), device=device)

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x)
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits.float(), y, ignore_index=255)
        scaler.scale(loss).backward()
        return loss.item()  # synchronises a CUDA device

    t = time.perf_counter()
    step()
    warmup = time.perf_counter() - t
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    out = {"variant": variant, "device": device_name, "size": f"{size[0]}x{size[1]}", "batch": batch,
           "threads": threads, "times_s": [round(t, 4) for t in times], "warmup_s": round(warmup, 2),
           "macs": macs}
    if v["compile"]:  # the warm-up step compiles: its time beyond a step is the compile time
        out["compile_s"] = round(warmup - statistics.median(times), 1)
    if cuda:
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 2)
        out["gpu"] = torch.cuda.get_device_name(device)
        out["cudnn_benchmark"], out["sync_bn"] = cudnn_benchmark, sync_bn
    else:
        out["peak_mem_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
    out["gemm_gflops"] = round(gemm_gflops(amp or torch.float32, device), 1)
    if profile_step:
        with torch.profiler.profile(record_shapes=True) as prof:
            step()
        out["profile_s"] = {k: round(s, 3) for k, s in profile_split(prof.events()).items()}
    return out


def _order(variants: list[str], rounds: int) -> list[str]:
    order = []
    for r in range(rounds):
        order += variants if r % 2 == 0 else variants[::-1]
    return order


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="512x1024", help="HxW (default 512x1024)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="timed steps per variant and round (after a warm-up)")
    p.add_argument("--rounds", type=int, default=1, help="repeat the variant list, alternating its order")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    p.add_argument("--profile", action="store_true", help="one profiled step per variant: where the time goes")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm (one-process group)")
    p.add_argument("--force-bf16", action="store_true", help="run bf16 on a CPU without AMX/AVX512-BF16")
    p.add_argument("--json", help="write all results to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        h, w = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size {args.size!r}: expected HxW, e.g. 512x1024")
    variants = [v for v in args.variants.split(",") if v]
    for variant in variants:
        try:
            parsed = parse_variant(variant)
        except ValueError as e:
            p.error(str(e))
        if parsed["dtype"] == "fp16" and not args.device.startswith("cuda"):
            p.error(f"variant {variant}: fp16 autocast is measured on CUDA only (--device cuda)")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(f"--device {args.device}: CUDA is not available on this machine (torch {torch.__version__}, "
                  f"built for CUDA {torch.version.cuda}); run on a GPU machine or use --device cpu", file=sys.stderr)
            return 2
    elif args.device != "cpu":
        p.error(f"--device {args.device!r}: expected cpu, cuda or cuda:N")
    if args.child:
        print(json.dumps(run_variant(args.child, (h, w), args.batch, args.steps, args.threads, args.device,
                                     args.profile, args.cudnn_benchmark, args.sync_bn)))
        return 0
    if args.device == "cpu" and not (args.force_bf16 or cpu_has_bf16_units()):
        for variant in [v for v in variants if v.startswith("bf16")]:
            print(f"skipping {variant}: this CPU has no AMX/AVX512-BF16 units (use --force-bf16)", flush=True)
            variants.remove(variant)
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for variant in _order(variants, args.rounds):
        cmd = [sys.executable, __file__, "--child", variant, "--size", args.size, "--batch", str(args.batch),
               "--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device]
        cmd += ["--profile"] * (args.profile and not results[variant])
        cmd += ["--cudnn-benchmark"] * args.cudnn_benchmark + ["--sync-bn"] * args.sync_bn
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{variant} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
            return 1
        results[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[variant][-1]), flush=True)
    summary = []
    for variant, runs in results.items():
        times = [t for r in runs for t in r["times_s"]]
        summary.append({"variant": variant, "median_s": statistics.median(times), "steps": len(times),
                        "peak_mem_gib": max(r["peak_mem_gib"] for r in runs), "macs": runs[0]["macs"],
                        "gemm_gflops": statistics.median(r["gemm_gflops"] for r in runs),
                        "compile_s": runs[0].get("compile_s"), "profile_s": runs[0].get("profile_s")})
    base = summary[0]
    print(f"\n{args.device}, {args.size}, batch {args.batch}, {args.threads} threads, {args.rounds} round(s) of "
          f"{args.steps} step(s); {platform.processor() or platform.machine()}; ratios against {base['variant']}")
    print(f"{'variant':<20}{'median s':>10}{'speed-up':>10}{'img/s':>8}{'peak GiB':>10}{'GFLOP/s':>9}{'GEMM':>8}"
          f"{'compile s':>11}")
    for r in summary:
        compile_s = "" if r["compile_s"] is None else f"{r['compile_s']:.0f}"
        print(f"{r['variant']:<20}{r['median_s']:>10.3f}{base['median_s'] / r['median_s']:>9.2f}x"
              f"{args.batch / r['median_s']:>8.2f}{r['peak_mem_gib']:>10.2f}"
              f"{6 * r['macs'] * args.batch / r['median_s'] / 1e9:>9.1f}{r['gemm_gflops']:>8.1f}{compile_s:>11}")
    if args.profile:
        cats = sorted({c for r in summary for c in (r["profile_s"] or {})},
                      key=lambda c: -max((r["profile_s"] or {}).get(c, 0) for r in summary))
        print(f"\nprofiled step, seconds by kind (torch.profiler){'':<6}" + "".join(f"{r['variant']:>17}" for r in summary))
        for c in cats:
            print(f"{c:<52}" + "".join(f"{(r['profile_s'] or {}).get(c, 0):>17.3f}" for r in summary))
        print(f"{'total':<52}" + "".join(f"{sum((r['profile_s'] or {}).values()):>17.3f}" for r in summary))
    if args.json:
        from hrnas.io import atomic_write_json

        atomic_write_json(args.json, {"args": vars(args), "summary": summary, "runs": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
