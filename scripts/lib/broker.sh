# Shared by scripts/test, scripts/demo, scripts/bench and scripts/soak: install and start a local
# broker, Apache Kafka (scripts/lib/kafka-node) where Java 17+ and Maven are present, else Tansu.
# Source it; it defines functions and changes nothing until they are called.

TANSU_FEATURES="dynostore,libsql"

# Installs Tansu 0.6 from crates.io unless `tansu --version` already says 0.6. `cargo install`
# puts it in $CARGO_INSTALL_ROOT/bin, else $CARGO_HOME/bin (default ~/.cargo/bin): that directory
# goes first on PATH, so a CI run with its own CARGO_HOME finds the Tansu it installed.
ensure_tansu() {
  export PATH="${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}/bin:$PATH"
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

KAFKA_NODE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kafka-node"

# Which broker to start: REBOUND_BROKER=kafka|tansu|auto (default auto: Apache Kafka when Java 17+
# and Maven are present, else Tansu). Prints kafka or tansu.
choose_broker() {
  case "${REBOUND_BROKER:-auto}" in
  kafka)
    if ! "$KAFKA_NODE" available; then
      echo "error: REBOUND_BROKER=kafka needs Java 17 or newer and Maven (mvn) on PATH" >&2
      return 1
    fi
    echo kafka
    ;;
  tansu) echo tansu ;;
  auto) if "$KAFKA_NODE" available; then echo kafka; else echo tansu; fi ;;
  *)
    echo "error: REBOUND_BROKER must be kafka, tansu or auto, not ${REBOUND_BROKER}" >&2
    return 1
    ;;
  esac
}

# Installs what the chosen broker needs (Tansu: cargo install; Kafka: the Maven jars).
ensure_broker() {
  case "$1" in
  kafka) "$KAFKA_NODE" resolve >/dev/null ;;
  tansu) ensure_tansu ;;
  esac
}

# start_broker KIND PORT LOGFILE [STORAGE]: starts Apache Kafka (KIND=kafka, data in a fresh temp
# directory) or Tansu (KIND=tansu, STORAGE defaults to memory) on 127.0.0.1:PORT in the
# background, waits until it answers a Metadata request, and sets BROKER_PID, BROKER_KIND and
# BROKER_NAME (e.g. "Apache Kafka 4.4.0").
start_broker() {
  local kind=$1 port=$2 log=$3 storage=${4:-memory://tansu/}
  BROKER_KIND=$kind
  case "$kind" in
  kafka)
    BROKER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/rebound-kafka.XXXXXX")
    "$KAFKA_NODE" prepare "$BROKER_DIR" "$port" "$(free_port)"
    "$KAFKA_NODE" exec "$BROKER_DIR" >"$log" 2>&1 &
    BROKER_PID=$!
    BROKER_NAME="Apache Kafka $("$KAFKA_NODE" version)"
    ;;
  tansu)
    tansu broker \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine "$storage" >"$log" 2>&1 &
    BROKER_PID=$!
    BROKER_NAME="Tansu $(tansu --version | awk '{print $2}')"
    ;;
  esac
  local i
  for ((i = 0; i < 120; i++)); do
    if "$KAFKA_NODE" wait "$port" 1 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
      echo "error: the broker ($BROKER_NAME) exited at start-up; its log ($log):" >&2
      tail -n 40 "$log" >&2
      return 1
    fi
  done
  echo "error: the broker ($BROKER_NAME) did not answer a Metadata request on port $port within 120 s; log: $log" >&2
  return 1
}

# Stops the broker started by start_broker (SIGTERM, SIGKILL after 20 s) and removes Kafka's
# temporary data directory.
stop_broker() {
  if [ -n "${BROKER_PID:-}" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
    kill "$BROKER_PID" 2>/dev/null || true
    local i
    for ((i = 0; i < 200; i++)); do
      kill -0 "$BROKER_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
  fi
  if [ -n "${BROKER_DIR:-}" ]; then
    rm -rf "$BROKER_DIR"
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
