#!/usr/bin/env bash
# Fetch MathJax 3 from the npm registry into DEST (default book/_static/mathjax).
set -euo pipefail
dest=${1:-book/_static/mathjax}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent mathjax@3.2.2 >/dev/null && tar xzf mathjax-3.2.2.tgz)
mkdir -p "$dest"
cp -r "$tmp"/package/es5/* "$dest"/
test -f "$dest/tex-chtml.js"
