#!/bin/sh
# Runs on the GPU machine from the repository root (see docs/performance.md, "Face analysis"):
# GPU tests, bench_onnx rows (ours) and the peers (peer_onnx.py), all into $OUT.
# Expects .carry/onnx/{bin,libs,shared,converted} prepared on the build machine.
C=.carry/onnx
OUT=${OUT:-/tmp/onnx-out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/$C/libs:$LD_LIBRARY_PATH"
export INSTANTID_TEST_DATA="$PWD/tests/data" INSTANTID_SHARED_DIR="$PWD/$C/shared"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
"$C/bin/test_onnx_cuda" > "$OUT/test_onnx_cuda.txt" 2>&1; echo "test_onnx_cuda rc=$?"
tail -3 "$OUT/test_onnx_cuda.txt"
"$C/bin/test_onnx" > "$OUT/test_onnx.txt" 2>&1; echo "test_onnx rc=$?"
tail -2 "$OUT/test_onnx.txt"
B="$C/bin/bench_onnx"
for m in scrfd_2.5g scrfd_500m; do
  for dt in f32 f16; do
    for g in "" --no-graph; do
      "$B" --model "$C/shared/models/$m.onnx" --shape 1x3x640x640 --device cuda --dtype $dt $g --iters 100 --warmup 10 --check --label device >> "$OUT/ours.jsonl"
    done
  done
  "$B" --model "$C/shared/models/$m.onnx" --shape 1x3x640x640 --iters 10 --label device >> "$OUT/ours.jsonl"
done
cat "$OUT/ours.jsonl"
timeout 300 python3 benchmarks/onnx/peer_onnx.py bench --models-dir "$C/shared/models" --converted "$C/converted" \
  --iresnet100 /tmp/iresnet100.onnx --out "$OUT/peer.jsonl" > "$OUT/peer.log" 2>&1; echo "peer rc=$?"
tail -5 "$OUT/peer.log"
if [ -f /tmp/iresnet100.onnx ]; then
  for dt in f32 f16; do
    for g in "" --no-graph; do
      "$B" --model /tmp/iresnet100.onnx --shape 1x3x112x112 --device cuda --dtype $dt $g --iters 100 --warmup 10 --check --label device >> "$OUT/ours.jsonl"
    done
  done
  "$B" --model /tmp/iresnet100.onnx --shape 1x3x112x112 --iters 5 --label device >> "$OUT/ours.jsonl"
  tail -5 "$OUT/ours.jsonl"
fi
