"""The GPU measurement path without a GPU: clear errors, argument parsing, the benchmark's helpers."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hrnas.engine.distributed import training_device
from hrnas.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_supernet", ROOT / "benchmarks" / "bench_supernet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_device_choice():
    cpu = torch.device("cpu")
    assert training_device("auto", cpu, 1) == cpu and training_device("cpu", cpu, 1) == cpu
    assert training_device("cpu", torch.device("cuda", 0), 1) == cpu
    with pytest.raises(UserError, match="^train.device: unknown value 'gpu'; accepted: auto, cpu, cuda$"):
        training_device("gpu", cpu, 1)
    with pytest.raises(UserError, match="^train.device=cpu under torchrun"):
        training_device("cpu", torch.device("cuda", 0), 2)


@no_cuda
def test_training_on_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(UserError, match="^train.device=cuda: CUDA is not available"):
        training_device("cuda", torch.device("cpu"), 1)


@no_cuda
def test_gpu_check_fails_clearly_without_cuda(tmp_path):
    script = ROOT / "benchmarks" / "gpu_check.sh"
    out = tmp_path / "gpu.json"
    proc = subprocess.run(["bash", str(script), "--python", sys.executable, "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "CUDA is not available" in proc.stderr and not out.exists()
    for bad, message in ((["--bogus"], "unknown argument '--bogus'"), (["--size", "big"], "--size 'big'"),
                         (["--batch", "x"], "--batch 'x'"), (["--out"], "usage:")):
        proc = subprocess.run(["bash", str(script), *bad], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr, bad
    proc = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "one JSON out" in proc.stdout


@no_cuda
def test_bench_supernet_on_cuda_without_cuda_exits_2():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_supernet.py"), "--device", "cuda",
                           "--size", "64x64"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--device cuda: CUDA is not available" in proc.stderr


def test_bench_variant_names_and_profile_split():
    bench = _bench()
    assert bench.parse_variant("fp32-cl-plain-ckpt") == {"dtype": "fp32", "layout": "cl", "plain": True,
                                                          "fast": False, "ckpt": True, "compile": False}
    assert bench.parse_variant("fp32-cl-fast")["fast"] and not bench.parse_variant("fp32-cl")["fast"]
    for bad in ("fp32", "fp64-cl", "fp32-nhwc", "fp32-cl-quick", "fp32-cl-plain-fast"):
        with pytest.raises(ValueError, match="expected <fp32|bf16|fp16>"):
            bench.parse_variant(bad)
    conv1 = torch.nn.Conv2d(4, 8, 1, bias=False)
    dw = torch.nn.Conv2d(8, 8, 7, padding=3, groups=8, bias=False)
    bn = torch.nn.BatchNorm2d(8)
    x = torch.randn(2, 4, 16, 16)
    with torch.profiler.profile(record_shapes=True) as prof:
        torch.relu(bn(dw(conv1(x)))).sum().backward()
    split = bench.profile_split(prof.events())
    for key in ("conv 1x1 fwd", "conv 1x1 bwd", "conv depthwise 7x7 fwd", "conv depthwise 7x7 bwd", "BN fwd",
                "BN bwd", "ReLU fwd+bwd"):
        assert split.get(key, 0) > 0, (key, split)
