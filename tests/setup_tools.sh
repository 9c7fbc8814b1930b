#!/usr/bin/env bash
# Installs the tools the metrics tests run, once: promtool and the Prometheus server
# (Debian's `prometheus` package) and celery-exporter in a virtualenv of its own (its
# pins of prometheus-client and redis conflict with batchgrid's). A no-op when both
# are there already. Usage: tests/setup_tools.sh [PYTHON]
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
python="${1:-python3}"
#: Kept in sync with tests/test_metrics_prometheus.py, which looks for it here.
exporter_venv="$root/.tools/celery-exporter-venv"
#: The exporter release tested against (it is `danihodovic/celery-exporter`).
exporter_version="0.11.2"
#: Bump when the packages installed beside the exporter change.
exporter_stamp="$exporter_venv/.installed-$exporter_version-3"

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        # Without root and apt the Prometheus tests skip, except in CI (CI set),
        # where they fail: they are not optional there.
        echo "setup_tools: promtool and prometheus are missing and cannot be" \
            "installed here (needs root and apt); install your system's" \
            "'prometheus' package, or the Prometheus tests will skip" >&2
        [ -z "${CI:-}" ] || exit 1
    else
        echo "setup_tools: installing Debian's prometheus package (promtool, prometheus)"
        apt-get update -qq
        # No recommends: the node exporter would start a daemon we do not want.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            prometheus >/dev/null
    fi
fi

# The wheel has no console script; tests run `python -c 'from src.cli import cli; cli()'`.
if [ ! -e "$exporter_stamp" ]; then
    echo "setup_tools: installing celery-exporter $exporter_version in $exporter_venv"
    "$python" -m venv "$exporter_venv"
    "$exporter_venv/bin/python" -m pip install --quiet \
        "prometheus-exporter-celery==$exporter_version" "celery<5.6" packaging 2>&1 | grep -v 'is ignored' || true
    # The exporter pins redis<6, which kombu 5.6 refuses: celery 5.5 brings kombu 5.5.
    # kombu's Redis transport needs packaging, which the exporter does not declare.
    "$exporter_venv/bin/python" -c 'import src.exporter, kombu.transport.redis'
    touch "$exporter_stamp"
fi
