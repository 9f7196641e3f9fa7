# Shared settings for vigil's scripts: where slow things are cached outside the
# clone (build output, the Python test environment, the test broker), so a
# fresh clone on a machine that has them reuses them.
VIGIL_CACHE="${VIGIL_CACHE:-$HOME/.cache/vigil}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$VIGIL_CACHE/target}"
VIGIL_VENV="${VIGIL_VENV:-$VIGIL_CACHE/venv}"
VIGIL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIGIL_CACHE VIGIL_VENV VIGIL_ROOT
