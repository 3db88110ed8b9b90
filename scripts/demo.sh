#!/usr/bin/env bash
# The demo cluster: etcd and three hosts running pyflanneld in network namespaces,
# with a container behind each host's docker0, shown step by step; then removed.
#   scripts/demo.sh [--backend vxlan|udp|host-gw|alloc] [--hosts N] [--keep]
#   scripts/demo.sh --down      # remove a cluster left by --keep
# Run as root. Installs what is missing first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: run as root (it creates network namespaces)" >&2
  exit 1
fi
case " $* " in
  *" --down "*|*" -h "*|*" --help "*) ;;
  *) bash scripts/setup.sh ;;
esac
exec .venv/bin/python -m pyflannel.demo "$@"
