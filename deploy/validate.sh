#!/usr/bin/env bash
# Offline validation of deploy/: renders the Helm chart with Helm's own engine and validates
# every rendered object and every file in deploy/manifests/ against the Kubernetes schemas,
# strictly (unknown fields are errors); PodMonitor/ServiceMonitor against deploy/schemas/. The chart
# is rendered with and without the Prometheus Operator's API (helm's --api-versions).
# Checks that the config.toml in both ConfigMaps is byte-identical to deploy/config/config.toml.
#
#   bash deploy/validate.sh          # check; exit status 1 on any failure
#   bash deploy/validate.sh --sync   # first copy deploy/config/config.toml into 03-configmap.yaml
#
# Installs what it needs on first use (as root on a bare Debian machine): python3-venv from apt
# if missing, then a virtualenv outside the repository with two pinned PyPI packages:
#   helm-python-sdk       Helm v4's Go SDK as a native library (no helm binary needed)
#   kubernetes-validate   Kubernetes JSON schemas (1.25 .. 1.37) bundled, works offline
# After that it needs no network.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${INFERSCOPE_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/inferscope/deploy-venv}"
pins=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0)

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "validate: installing python3-venv (apt)" >&2
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3 python3-venv >&2
fi
stamp="$venv/.inferscope-pins"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "${pins[*]}" ]]; then
    echo "validate: creating $venv with ${pins[*]}" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${pins[@]}" >&2
    echo "${pins[*]}" >"$stamp"
fi

exec "$venv/bin/python" deploy/validate.py "$@"
