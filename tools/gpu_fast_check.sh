#!/bin/bash
# The GPU check of the fast profile (issue 13), prepared for a session whose task is lent an H200
# through the device tool (15 minutes of device time, 10 minutes a command). Here, first:
#
#   mkdir -p .gpu && cp ../shared/data/cifar10-jpeg-q75.tar.gz .gpu/      # .gpu/ is git-ignored
#   bash tools/gpu_fast_check.sh fast      # on this CPU it refuses: no CUDA device
#
# then with the device tool, one call each (the machine stays warm 30 s between calls):
#
#   run(command="bash tools/gpu_fast_check.sh fast", carry=[".gpu"], timeout_s=560)
#   run(command="bash tools/gpu_fast_check.sh bench", carry=[".gpu"], timeout_s=300)
#
# and unpack $OUT's fast-h200.tar.gz under results/fast-h200-<date>/ and commit it. The machine has
# torch, torchvision, timm and seaborn but no papermill, Jupyter or Ray: `stitchlib run` uses the
# local executor (four tasks per GPU). At most 8 files come back from $OUT, so the run's folder
# travels as one archive, with run.json and the throughput report beside it.
set -euo pipefail
what=${1:?usage: gpu_fast_check.sh fast|bench}
here=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$here/.gpu/out}
day=$(date +%F)
results=$here/.gpu/fast-h200-$day
mkdir -p "$out" "$results"
export PYTHONUNBUFFERED=1 STITCHLIB_CIFAR10_ARCHIVE=$here/.gpu/cifar10-jpeg-q75.tar.gz
export STITCHLIB_DATA=${STITCHLIB_DATA:-/tmp/stitchlib-data} STITCHLIB_STORE=${STITCHLIB_STORE:-/tmp/stitchlib-store}
cd "$here"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run this on the GPU machine')"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python -c "import torch, platform; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', platform.python_version())"; nproc; } > "$results/hardware.txt"
case $what in
  fast)
    # All five notebooks end to end, start-up included, as the issue's 8-minute budget counts it.
    start=$(date +%s)
    timeout 520 python -m stitchlib run all --profile fast --figures "$results" 2>&1 | tee "$results/run.log" | grep -v "it/s\]" || true
    echo "wall seconds, start-up included: $(( $(date +%s) - start ))" | tee -a "$results/hardware.txt"
    cp "$results/run.json" "$out/" 2>/dev/null || true
    ;;
  bench)
    timeout 280 python bench/gpu_throughput.py --steps 20 --seconds 10 --tasks 1,2,4 --compile --out "$results"
    cp "$results/gpu_throughput.json" "$out/"
    ;;
  *) echo "unknown step $what: fast or bench" >&2; exit 2 ;;
esac
tar -C "$here/.gpu" -czf "$out/fast-h200.tar.gz" "fast-h200-$day"
