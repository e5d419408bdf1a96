# Shared by scripts/test and scripts/demo: install and start a local Tansu broker.
# Source it; it defines functions and changes nothing until they are called.

TANSU_FEATURES="dynostore,libsql"

# Installs Tansu 0.6 from crates.io unless `tansu --version` already says 0.6.
ensure_tansu() {
  export PATH="$HOME/.cargo/bin:$PATH"
  if command -v tansu >/dev/null 2>&1 && tansu --version 2>/dev/null | grep -q ' 0\.6\.'; then
    return 0
  fi
  echo "==> installing the Tansu broker (cargo install tansu; about 10 minutes the first time)" >&2
  cargo install tansu --version '~0.6' --locked --features "$TANSU_FEATURES" >&2
}

# Makes sure the C build dependencies of librdkafka (rdkafka's static build) are present.
ensure_build_deps() {
  if pkg-config --exists openssl 2>/dev/null; then
    return 0
  fi
  echo "==> installing libssl-dev (needed to build librdkafka with TLS)" >&2
  if command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq >&2 && apt-get install -y -qq libssl-dev pkg-config >&2
    else
      sudo apt-get update -qq >&2 && sudo apt-get install -y -qq libssl-dev pkg-config >&2
    fi
  else
    echo "error: install OpenSSL development files (libssl-dev / openssl-devel) and pkg-config" >&2
    return 1
  fi
}

# Prints a free TCP port on 127.0.0.1.
free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
  else
    echo $(( 20000 + RANDOM % 20000 ))
  fi
}

# start_broker PORT LOGFILE [STORAGE]: starts Tansu in the background, waits until it accepts
# connections, and sets BROKER_PID.
start_broker() {
  local port=$1 log=$2 storage=${3:-memory://tansu/}
  tansu broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "$storage" >"$log" 2>&1 &
  BROKER_PID=$!
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
      echo "error: the broker exited at start-up; its log:" >&2
      cat "$log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "error: the broker did not accept connections on port $port within 10 s" >&2
  return 1
}

stop_broker() {
  if [ -n "${BROKER_PID:-}" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
  fi
}

# Installs Debian's prometheus package (prometheus + promtool) for the observability tests.
ensure_prometheus() {
  if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    return 0
  fi
  echo "==> installing Prometheus (Debian package) for the observability tests" >&2
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq >&2
  # The package's own service is not wanted: the tests start Prometheus on a loopback port.
  RUNLEVEL=1 $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2
}
