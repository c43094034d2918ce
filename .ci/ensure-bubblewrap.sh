#!/usr/bin/env bash
# The grading sandbox's allowlist is bubblewrap (Debian's bubblewrap, Flatpak's sandbox); the grading
# tests require it (tests/test_grading.py fails, not skips, without it).
set -euo pipefail
if command -v bwrap >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Debian's bubblewrap for the grading sandbox ..."
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
else
  echo "bubblewrap is not installed and cannot be installed here (need root + apt-get):" >&2
  echo "the grading tests will fail; install it (apt-get install bubblewrap) or ask your administrator." >&2
fi
