#!/usr/bin/env bash
# Installs the Debian packages instantid builds and tests with, plus any packages named as
# arguments (tools/ci-hostile.sh adds its fuzzing toolchain). Safe to run again.
# The CUDA toolkit (nvcc, cuBLAS, cuDNN) is whatever the machine came with; without it the CUDA
# backend is simply not built (INSTANTID_CUDA=AUTO).
set -euo pipefail
packages=(build-essential cmake pkg-config libeigen3-dev catch2 libstb-dev libjpeg-dev libonnx-dev
          libprotobuf-dev protobuf-compiler nlohmann-json3-dev libdlpack-dev "$@")
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi
