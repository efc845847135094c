#!/usr/bin/env bash
# The GPU checks of the issue "GPU targets", as one script for a GPU host with onnxruntime-gpu (and onnxsim) importable
# and no TensorRT. Run from the project root; what it records lands in $OUT (default runs/gpu-session):
#
#   OUT=/tmp/out BUDGET=420 bash benchmarks/gpu_session.sh 2>&1 | tee /tmp/out/session.log
#
# 1. the pipeline end to end: edge-inception pipeline --target gpu -o runs/gpu (fp32, fp16, int8 through the CUDA provider)
# 2. the GPU tests (tests/test_gpu.py), while two diagnostic artifacts are built beside them (nothing is timed then):
#    FP32 with --allow-tf32 (what strict FP32 costs), and FP16 exported at a fixed batch of 1 (ORT's CUDA graph)
# 3. the goals' benchmark, one run, nothing else running: every artifact beside PyTorch eager FP32, FP16 channels-last,
#    FP16 channels-last from a CUDA graph and plain ONNX Runtime CUDA, at batch 1 and 32, each engine in its own process
# 4. predict through each artifact; the whole suite if time is left
# Each step has a time limit inside BUDGET seconds and the script goes on after a failure, so one run reports on all.
# Recorded runs: benchmarks/results/gpu/README.md.
set -u -o pipefail
OUT=${OUT:-runs/gpu-session}
BUDGET=${BUDGET:-420}
mkdir -p "$OUT"
EI="python3 -m edge_inception"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
step() { echo; echo "=== $1 (t=$(( $(date +%s) - T0 )) s)"; }
lim() { local l=$(( BUDGET - ($(date +%s) - T0) )); (( l < $1 )) || l=$1; (( l > 5 )) || l=5; echo "$l"; }

step environment
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "
import onnxruntime as ort, torch, platform
print('python', platform.python_version(), '| torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(),
      '| onnxruntime', ort.__version__, ort.get_available_providers())"
probe='from edge_inception.engines.ort import provider_missing as m; print("CUDA:", m("CUDAExecutionProvider"), "| TensorRT:", m("TensorrtExecutionProvider"))'
python3 -c "$probe"
uptime

step "pipeline --target gpu"
rm -rf runs/gpu runs/gpu-diag
timeout "$(lim 240)" $EI pipeline --target gpu -o runs/gpu --batch 1 --rounds 1 --iterations 50 2>&1 | tail -45
echo "pipeline exit ${PIPESTATUS[0]}"
ls runs/gpu runs/gpu/artifacts 2>&1

step "GPU tests, diagnostic builds beside them"
timeout "$(lim 200)" python3 -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py > "$OUT/pytest-gpu.txt" 2>&1 &
tests=$!
mkdir -p runs/gpu-diag
cp runs/gpu/model.fp32.onnx runs/gpu-diag/model.fp32-tf32.onnx
timeout "$(lim 60)" $EI build runs/gpu-diag/model.fp32-tf32.onnx --target gpu --allow-tf32 -o runs/gpu-diag 2>&1 | tail -3
timeout "$(lim 60)" $EI export -o runs/gpu-diag/model.b1.onnx --batch 1 2>&1 | tail -1
timeout "$(lim 60)" $EI quantize runs/gpu-diag/model.b1.onnx --precision fp16 -o runs/gpu-diag/model.b1.fp16.onnx 2>&1 | tail -1
timeout "$(lim 60)" $EI build runs/gpu-diag/model.b1.fp16.onnx --target gpu -o runs/gpu-diag 2>&1 | tail -3
wait $tests; echo "gpu tests exit $?"; tail -25 "$OUT/pytest-gpu.txt"

step "goals benchmark: batch 1 and 32, one run"
uptime
arts=$(ls runs/gpu/artifacts/*.ort.onnx runs/gpu-diag/model.fp32-tf32.ort.onnx 2>/dev/null)
timeout "$(lim 200)" $EI bench $arts --batch 1,32 --rounds 1 --iterations 200 --warmup 30 \
  --json "$OUT/goals.json" --markdown "$OUT/goals.md" 2>&1 | tail -30
echo "bench exit ${PIPESTATUS[0]}"
step "fixed batch 1 with ORT's CUDA graph"
timeout "$(lim 90)" $EI bench runs/gpu-diag/model.b1.fp16.ort.onnx --batch 1 --rounds 1 --iterations 200 --warmup 30 \
  --json "$OUT/graph-b1.json" 2>&1 | tail -12

step "predict through each GPU artifact"
img=$(python3 -c "from edge_inception.data.demo_data import default_demo_dir as d, make_demo_dataset as m; print(sorted((m(d()) / 'val').rglob('*.png'))[0])")
for a in $arts; do timeout "$(lim 60)" $EI predict "$a" "$img" --top-k 1 2>&1 | tail -2; done

tar czf "$OUT/runs.tar.gz" --exclude='*.onnx' --exclude='*.npy' runs/gpu runs/gpu-diag 2>/dev/null

left=$(( BUDGET - ($(date +%s) - T0) ))
if (( left > 90 )); then
  step "the whole suite (${left} s left)"
  timeout $(( left - 10 )) python3 -m pytest -q -p no:cacheprovider -n 8 -rs 2>&1 | tail -30
fi
step done
