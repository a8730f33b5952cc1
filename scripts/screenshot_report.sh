#!/usr/bin/env bash
# Render an HTML report in headless Chromium and save a PNG screenshot (to look at what users see).
# Usage: scripts/screenshot_report.sh REPORT.html [OUT.png] [WIDTHxHEIGHT]
# Needs chromium (Debian: apt-get update && apt-get install -y chromium).
set -euo pipefail
report="${1:?usage: $0 REPORT.html [OUT.png] [WIDTHxHEIGHT]}"
out="${2:-/tmp/report.png}"
size="${3:-1280x2400}"
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
if [ -z "$browser" ]; then
  echo "error: no chromium on PATH (apt-get update && apt-get install -y chromium)" >&2
  exit 2
fi
if [ ! -f "$report" ]; then
  echo "error: no such report: $report" >&2
  exit 2
fi
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
abs="$(cd "$(dirname "$report")" && pwd)/$(basename "$report")"
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --screenshot="$out" --window-size="${size/x/,}" "file://$abs" >/dev/null 2>&1
echo "screenshot: $out"
