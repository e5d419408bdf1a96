# Sourced by scripts/test: a headless browser for the console's end-to-end test.

# Installs Debian's chromium and chromium-driver when missing. A machine where they cannot be
# installed still runs every other test; tests/it/console_browser.rs then says it was skipped.
ensure_browser() {
  if command -v chromedriver >/dev/null 2>&1 && { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then
    return 0
  fi
  echo "==> installing chromium and chromium-driver (Debian packages) for the console's browser test" >&2
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  if ! command -v apt-get >/dev/null 2>&1 \
    || ! $sudo apt-get update -qq >&2 \
    || ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2; then
    echo "==> could not install chromium; the console's browser test will be skipped" >&2
  fi
  return 0
}
