#!/usr/bin/env bash
# The GPU measurements of the Cityscapes super network in one go (under 8 minutes on one GPU), one JSON out.
#
#   benchmarks/gpu_check.sh [--out FILE] [--python PY] [--size HxW] [--batch N]
#
# 1. benchmarks/bench_supernet.py --device cuda: training step (fwd + CE + bwd) of the plain NCHW baseline,
#    fp32 channels_last (fast paths), bf16 and fp16 autocast, activation checkpointing and regional
#    torch.compile (compile time reported; a part of its own), each variant in its own process: median step, images/s, peak
#    CUDA memory; then the same with cudnn.benchmark on, and fp32 with SyncBatchNorm (one-process group).
# 2. hrnas search cityscapes --preset smoke train.device=cuda train.amp=bf16 train.cudnn_benchmark=true: the
#    trainer's path on the GPU (run.json "throughput": images/s, peak memory).
# Every part has its own time limit; a part that fails or times out is recorded as such in the JSON.
set -u
OUT=gpu_check.json
PY=${PYTHON:-python}
SIZE=512x1024
BATCH=4
usage() { echo "usage: $0 [--out FILE] [--python PY] [--size HxW] [--batch N]" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || usage; OUT=$2; shift 2 ;;
    --python) [ $# -ge 2 ] || usage; PY=$2; shift 2 ;;
    --size) [ $# -ge 2 ] || usage; SIZE=$2; shift 2 ;;
    --batch) [ $# -ge 2 ] || usage; BATCH=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
case "$SIZE" in *[0-9]x[0-9]*) ;; *) echo "gpu_check.sh: --size '$SIZE': expected HxW, e.g. 512x1024" >&2; exit 2 ;; esac
case "$BATCH" in ''|*[!0-9]*) echo "gpu_check.sh: --batch '$BATCH': expected a positive integer" >&2; exit 2 ;; esac
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)" 2>/dev/null; then
  echo "gpu_check.sh: CUDA is not available to $PY ($("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA build", torch.version.cuda)' 2>&1 | tail -1)); run it on a GPU machine" >&2
  exit 2
fi
HERE=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
part() {  # part NAME LIMIT_S COMMAND...: run with a time limit, keep its log and exit status
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" >"$TMP/$name.log" 2>&1
  echo "$? $(( $(date +%s) - t0 ))" >"$TMP/$name.status"
  echo "gpu_check: $name: exit $(cut -d' ' -f1 "$TMP/$name.status") in $(cut -d' ' -f2 "$TMP/$name.status") s" >&2
}
BENCH=("$PY" "$HERE/bench_supernet.py" --device cuda --size "$SIZE" --batch "$BATCH" --steps 5)
part variants 150 "${BENCH[@]}" --json "$TMP/variants.json" \
  --variants fp32-nchw-plain,fp32-cl,bf16-cl,fp16-cl,fp32-cl-ckpt
part compile 120 "${BENCH[@]}" --json "$TMP/compile.json" --variants fp32-cl,fp32-cl-compile
part cudnn_benchmark 90 "${BENCH[@]}" --json "$TMP/cudnn_benchmark.json" --cudnn-benchmark \
  --variants fp32-nchw-plain,fp32-cl,bf16-cl,fp16-cl
part sync_bn 50 "${BENCH[@]}" --json "$TMP/sync_bn.json" --sync-bn --variants fp32-cl,bf16-cl
part search 60 "$PY" -m hrnas search cityscapes --preset smoke --out "$TMP/search" --no-progress \
  train.device=cuda train.amp=bf16 train.cudnn_benchmark=true
"$PY" - "$TMP" "$OUT" "$SIZE" "$BATCH" <<'EOF'
import json, pathlib, platform, sys
import torch
tmp, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
result = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
          "cudnn": torch.backends.cudnn.version(), "host": platform.node(), "size": sys.argv[3],
          "batch": int(sys.argv[4]), "parts": {}}
for status in sorted(tmp.glob("*.status")):
    name = status.stem
    code, seconds = (int(v) for v in status.read_text().split())
    entry = {"exit": code, "seconds": seconds, "timed_out": code == 124}
    data = tmp / f"{name}.json"
    if data.is_file():
        entry["summary"] = json.loads(data.read_text())["summary"]
    run = tmp / name / "run.json"
    if run.is_file():
        record = json.loads(run.read_text())
        entry.update(throughput=record.get("throughput"), metrics=record.get("metrics"), device=record.get("device"))
    if code != 0:
        entry["log_tail"] = (tmp / f"{name}.log").read_text()[-2000:]
    result["parts"][name] = entry
tmp_out = out.with_name(out.name + ".tmp")
tmp_out.write_text(json.dumps(result, indent=1) + "\n")
tmp_out.replace(out)
print(f"gpu_check: wrote {out}")
EOF
