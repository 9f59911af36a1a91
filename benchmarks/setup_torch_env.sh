#!/usr/bin/env bash
# Creates the optional PyTorch peer environment for the benchmarks: benchmarks/.venv-torch with
# torch 2.14.1, torchvision 0.29.1 and timm (the versions the issue's targets were measured with).
# It is separate from the project venv (whose torch 2.13 only serves the parity tests) and is
# not needed by the test suite. Usage: bash benchmarks/setup_torch_env.sh [python3.11]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-torch"
python="${1:-python3.11}"
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1" timm numpy
"$venv/bin/python" - <<'PY'
import timm, torch, torchvision
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, "
      f"threads {torch.get_num_threads()}")
PY
