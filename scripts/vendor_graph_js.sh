#!/bin/sh
# Fetch the graph viewer's d3 again from npm (the page bundles it; it never loads from a CDN):
#   sh scripts/vendor_graph_js.sh [version]
# then check the page: pytest tests/test_graph_viewer.py
set -eu
version="${1:-7.9.2}"
dest="$(cd "$(dirname "$0")/.." && pwd)/codecircuits/graphs/assets"
tmp="$(mktemp -d)"
cd "$tmp"
npm pack "d3@${version}" >/dev/null
tar xzf "d3-${version}.tgz"
cp package/dist/d3.min.js "$dest/d3.min.js"
cp package/LICENSE "$dest/d3.LICENSE"
sha256sum "d3-${version}.tgz"
rm -rf "$tmp"
