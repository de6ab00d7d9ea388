#!/usr/bin/env bash
# Installs the Megablocks baseline (megablocks 0.10.0, stanford-stk 0.7.1, grouped_gemm 0.3.0) for the
# torch already installed, on a CUDA machine.
#
#   experiments/bench/install_megablocks.sh [WHEEL_DIR]
#
# With WHEEL_DIR holding prebuilt wheels (e.g. ../shared/wheels on our GPU machine, which has no
# network), installs those into /tmp/site (add it to PYTHONPATH). Otherwise downloads the sdists from
# PyPI and builds them with the one fix CUDA 13 needs: megablocks' csrc/cumsum.h passes
# `debug_synchronous` to cub::DeviceScan, a parameter CUB removed (megablocks issue #180).
# Megablocks pins torch 2.7; --no-deps keeps your torch. TORCH_CUDA_ARCH_LIST defaults to this GPU.
set -euo pipefail
PY=${PYTHON:-python3}
if [ $# -ge 1 ] && ls "$1"/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-deps --target /tmp/site "$1"/*.whl
    echo "installed into /tmp/site: export PYTHONPATH=/tmp/site:\$PYTHONPATH"
    exit 0
fi
arch=${TORCH_CUDA_ARCH_LIST:-$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
$PY -m pip download -q --no-deps --no-binary :all: megablocks==0.10.0 stanford-stk==0.7.1 grouped_gemm==0.3.0
for f in *.tar.gz; do tar xzf "$f"; done
perl -0pi -e 's/stream,\s*debug_synchronous\)\)/stream))/g' megablocks-0.10.0/csrc/cumsum.h
for d in grouped_gemm-0.3.0 stanford_stk-0.7.1 megablocks-0.10.0; do
    (cd "$d" && MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=$arch $PY -m pip install -q --no-build-isolation --no-deps .)
done
echo "megablocks installed for sm_${arch/./}"
