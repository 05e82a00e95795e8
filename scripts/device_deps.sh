#!/usr/bin/env bash
# Fetches the C++ libraries Mamba R1 builds against (Eigen, TOML++, Catch2, spdlog with fmt,
# nlohmann-json) as Debian .deb files into DIR (default: .device-deps, ignored by git), for a machine
# that has the CUDA toolkit but no package registry to install them from, such as the lent GPU machine.
# scripts/gpu_check.sh unpacks them there into its build folder when the folder is present:
#
#   scripts/device_deps.sh                           # here, where Debian's archive is reachable
#   device run: scripts/gpu_check.sh, carrying .device-deps
#
# Only the packages themselves and their library dependencies are fetched; the C and C++ runtimes,
# the compiler and CMake are the other machine's own. Safe to run repeatedly.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/.device-deps}"
wanted=(libeigen3-dev libtomlplusplus-dev catch2 libspdlog-dev libfmt-dev nlohmann-json3-dev)
# The closure of their dependencies, kept to these libraries (not libc6, libstdc++6, pkg-config ...).
ours='^(libeigen3-dev|libtomlplusplus|catch2|libspdlog|libfmt|nlohmann-json)'

packages="$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
  --no-enhances "${wanted[@]}" | grep -v '^ ' | grep -E "$ours" | sort -u)"
mkdir -p "$out"
cd "$out"
rm -f ./*.deb
# shellcheck disable=SC2086
if ! apt-get download $packages >/dev/null 2>&1; then
  echo "device_deps: refreshing the package lists"
  sudo_prefix=""
  [ "$(id -u)" -eq 0 ] || sudo_prefix="sudo"
  $sudo_prefix apt-get update -qq
  apt-get download $packages >/dev/null
fi
# Plain file names (letters, digits, '.', '_', '-'): '%3a' (an epoch's colon) and '+' become '_'.
for deb in ./*.deb; do
  plain="$(printf '%s' "$deb" | sed 's/%3a/_/g; s/[^A-Za-z0-9._/-]/_/g')"
  [ "$deb" = "$plain" ] || mv "$deb" "$plain"
done
echo "device_deps: $(ls ./*.deb | wc -l) packages ($(du -sh . | cut -f1)) in $out:"
ls ./*.deb | sed 's|^\./|  |'
