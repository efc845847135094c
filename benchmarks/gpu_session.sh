#!/usr/bin/env bash
# Every GPU candidate measured in one call, for a GPU host with onnxruntime-gpu, torch (CUDA) and onnxsim importable.
# Run from the project root; what it records lands in $OUT (default runs/gpu-session) and, with the GPU's name, in
# benchmarks/results/gpu/<date>-<gpu>/ for the session to commit:
#
#   OUT=/tmp/out BUDGET=480 bash benchmarks/gpu_session.sh 2>&1 | tee /tmp/out/session.log
#
# 1. the pipeline: `pipeline --target gpu --batch 1,32` plans every candidate the gpu preset allows and this machine
#    runs (native TensorRT if it loads; ONNX Runtime x fp32 strict, fp32 with TF32 (judged by cosine), fp16, int8, each
#    also exported at a fixed batch of 1 so ONNX Runtime replays a captured CUDA graph), builds and verifies them, and
#    measures them all in ONE benchmark run beside PyTorch eager FP32, FP16 channels-last, FP16 channels-last from a CUDA
#    graph and plain ONNX Runtime CUDA (each engine in its own process); ships the fastest that passed its judge
# 2. the goals from that one run (benchmarks/candidates_goals.py gpu): batch 1 shipped <= PyTorch FP16 CUDA graph and
#    <= 0.25 x eager FP32; batch 32 best candidate >= 1.2 x PyTorch FP16 channels-last
# 3. the GPU tests (tests/test_gpu.py), after the benchmark, so that nothing runs beside it
# Each step has a time limit inside BUDGET seconds and the script goes on after a failure, so one run reports on all.
set -u -o pipefail
OUT=${OUT:-runs/gpu-session}
BUDGET=${BUDGET:-480}
mkdir -p "$OUT"
EI="python3 -m edge_inception"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
step() { echo; echo "=== $1 (t=$(( $(date +%s) - T0 )) s)"; }
lim() { local l=$(( BUDGET - ($(date +%s) - T0) )); (( l < $1 )) || l=$1; (( l > 5 )) || l=5; echo "$l"; }

step environment
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "
import onnxruntime as ort, torch, platform
print('python', platform.python_version(), '| torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(),
      '| onnxruntime', ort.__version__, ort.get_available_providers())"
python3 -c '
from edge_inception.engines.candidates import missing_backends, plan_candidates
from edge_inception.engines.choose import probe
from edge_inception.engines.targets import get_target
from edge_inception.vocab import Precision
t = get_target("gpu"); plan = plan_candidates(t, list(Precision), missing_backends(t), probe(t))
print("candidates:", ", ".join(c.name for c in plan.candidates)); [print("  not a candidate:", s.name, "-", s.why) for s in plan.skipped]'
uptime

step "pipeline --target gpu: every candidate, one benchmark run at batch 1 and 32"
rm -rf runs/gpu
timeout "$(lim 330)" $EI pipeline --target gpu -o runs/gpu --batch 1,32 --rounds 1 --iterations 100 2>&1 | tail -40
echo "pipeline exit ${PIPESTATUS[0]}"
ls runs/gpu runs/gpu/artifacts 2>&1 | head -40

step "goals from that run"
slug=$(echo "$gpu" | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/-$//')
RES="benchmarks/results/gpu/$(date -u +%Y-%m-%d)-${slug:-gpu}"
mkdir -p "$RES"
timeout "$(lim 60)" python3 benchmarks/candidates_goals.py gpu runs/gpu --out "$RES" 2>&1 | tail -30
for f in report.json report.md bench.json bench.md profile.png; do cp "runs/gpu/$f" "$RES/pipeline-$f" 2>/dev/null; done
cp "$RES"/* "$OUT"/ 2>/dev/null

step "predict through the shipped artifact"
img=$(python3 -c "from edge_inception.data.demo_data import default_demo_dir as d, make_demo_dataset as m; print(sorted((m(d()) / 'val').rglob('*.png'))[0])")
shipped=$(python3 -c "import json; print(json.load(open('runs/gpu/report.json'))['ship']['artifact'] or '')" 2>/dev/null)
[ -n "$shipped" ] && timeout "$(lim 60)" $EI predict "runs/gpu/$shipped" "$img" --top-k 1 2>&1 | tail -2

step "GPU tests"
timeout "$(lim 150)" python3 -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py tests/test_candidates.py > "$OUT/pytest-gpu.txt" 2>&1
echo "gpu tests exit $?"; tail -25 "$OUT/pytest-gpu.txt"; cp "$OUT/pytest-gpu.txt" "$RES/" 2>/dev/null

tar czf "$OUT/runs.tar.gz" --exclude='*.onnx' --exclude='*.npy' --exclude='*.bin' runs/gpu 2>/dev/null
echo "results in $RES (commit them) and $OUT"
step done
