#!/usr/bin/env bash
# raftkit's kv against a 3-member etcd on this machine, in one run.
# Installs etcd (Debian's etcd-server/etcd-client) and protoc when missing,
# builds `kv` and the bench in release mode, runs it. Arguments go to the
# bench (see `--help`): e.g. `benches/sidebyside.sh --runs 3`, or
# `--no-curve` for the four main cells only, `--only raftkit --cells put:64
# --no-curve` for one cell of one system (to measure or profile it).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v etcd >/dev/null || need+=(etcd-server etcd-client)
command -v protoc >/dev/null || need+=(protobuf-compiler)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get install -y "${need[@]}" >&2
fi
cargo build --release -p kv >&2
(cd benches/sidebyside && cargo build --release >&2)
exec benches/sidebyside/target/release/sidebyside --kv target/release/kv --out target/sidebyside "$@"
