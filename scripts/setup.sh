#!/usr/bin/env bash
# Installs what Mamba R1 needs and is missing: Debian's -dev packages for the C++ build, and the
# Python packages of the NumPy reference used by the cross-check. Safe to run repeatedly.
set -euo pipefail

packages=(cmake g++ make libeigen3-dev libtomlplusplus-dev catch2 libspdlog-dev libfmt-dev nlohmann-json3-dev python3 python3-pip)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_prefix=""
  [ "$(id -u)" -eq 0 ] || sudo_prefix="sudo"
  $sudo_prefix apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_prefix apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if ! python3 -c "import numpy, safetensors" >/dev/null 2>&1; then
  echo "setup: installing the reference's Python packages (numpy, safetensors)"
  python3 -m pip install --quiet --disable-pip-version-check -r "$here/requirements-reference.txt" ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages -r "$here/requirements-reference.txt"
fi
