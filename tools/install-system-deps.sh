#!/usr/bin/env bash
# System packages that napari/Qt6 need for a real OpenGL canvas on a headless
# Debian/Ubuntu machine (virtual X display via Xvfb, software OpenGL via Mesa).
#
# Used by the README's test command and by .ci/run; tox.ini expects them too.
# - uses sudo only when not running as root
# - skips apt entirely when every package is already installed (fast reruns)
#
# The list was found by resolving (ldd + dpkg -S) what PyQt6's xcb platform
# plugin, QtOpenGL, libGL/libEGL/Mesa swrast and Xvfb load, and checked on a
# minimal Debian bookworm (debootstrap --variant=minbase); apt pulls the rest
# (libxcb1, libx11-6, libdrm2, libllvm15, ...) in as dependencies.
set -euo pipefail

PKGS=(
    # virtual X server (pytest-xvfb starts it)
    xvfb
    # OpenGL through Mesa (llvmpipe software renderer), GLX and EGL
    libgl1
    libglx-mesa0
    libgl1-mesa-dri
    libegl1
    # what Qt6's xcb platform plugin (libqxcb.so / libQt6XcbQpa) links against
    libx11-xcb1
    libxkbcommon-x11-0
    libxcb-cursor0
    libxcb-icccm4
    libxcb-image0
    libxcb-keysyms1
    libxcb-randr0
    libxcb-render-util0
    libxcb-shape0
    libxcb-xfixes0
    libxcb-xkb1
    libfontconfig1
    libdbus-1-3
    # QtCore links libgthread-2.0 (not pulled in by anything above)
    libglib2.0-0
    # a font, so Qt's text rendering has something to use
    fonts-dejavu-core
)

# `python3 -m venv` needs ensurepip, which Debian ships separately.
if command -v python3 >/dev/null 2>&1; then
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        PKGS+=(python3-venv)
    fi
else
    PKGS+=(python3 python3-venv)
fi

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-system-deps: all ${#PKGS[@]} system packages already present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-system-deps: done"
