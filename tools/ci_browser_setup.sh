#!/usr/bin/env bash
# Installs the Debian packages the test suite needs beyond Rust:
# - headless Chromium and its WebDriver, for the web page test (crates/gclip-server/tests/browser.rs
#   drives them on loopback only);
# - libjpeg-turbo's cjpeg/djpeg, for the JPEG differential test (crates/gclip/tests/jpeg_differential.rs,
#   which fails without them, as the web page test does).
# - a Java runtime (17 or newer, Debian's default), for the Python package's Spark test
#   (crates/gclip-py/tests/test_spark.py runs a local[2] Spark, which starts a JVM).
# Idempotent: installs only what is missing.
set -euo pipefail
packages=()
command -v chromium >/dev/null || packages+=(chromium)
command -v chromedriver >/dev/null || packages+=(chromium-driver)
{ command -v cjpeg >/dev/null && command -v djpeg >/dev/null; } || packages+=(libjpeg-turbo-progs)
command -v java >/dev/null || packages+=(default-jre-headless)
if [ ${#packages[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
chromium --version
chromedriver --version
cjpeg -version 2>&1 | head -n 1
java -version 2>&1 | head -n 1
