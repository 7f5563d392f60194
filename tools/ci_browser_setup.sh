#!/usr/bin/env bash
# Installs what the web page test needs: Debian's headless Chromium and its WebDriver.
# crates/gclip-server/tests/browser.rs drives them on loopback only.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
chromium --version
chromedriver --version
