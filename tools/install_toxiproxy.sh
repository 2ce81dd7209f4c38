#!/usr/bin/env bash
# Build Toxiproxy's server (a TCP fault proxy with an HTTP API) from the Go module proxy, once.
#
#   tools/install_toxiproxy.sh            -> prints the path of toxiproxy-server
#
# Cached under ${RSCF_CACHE_DIR:-~/.cache/rscf}/toxiproxy/<version>/ (GOBIN); a second call only
# prints the path. Pinned: `@latest` resolves to an old v2.5.0 on the module proxy here.
set -euo pipefail

VERSION="${TOXIPROXY_VERSION:-v2.12.0}"
CACHE="${RSCF_CACHE_DIR:-$HOME/.cache/rscf}/toxiproxy/${VERSION}"
BIN="${CACHE}/toxiproxy-server"

if [[ -x "${BIN}" ]]; then
  echo "${BIN}"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  for candidate in /usr/local/go/bin/go /usr/lib/go/bin/go; do
    [[ -x "${candidate}" ]] && PATH="$(dirname "${candidate}"):${PATH}" && break
  done
fi
command -v go >/dev/null 2>&1 || { echo "toxiproxy: needs a Go toolchain (https://go.dev/dl)" >&2; exit 1; }

mkdir -p "${CACHE}"
# The module and build caches stay with the binary: a rebuild after `go clean` is still offline-friendly.
export GOBIN="${CACHE}.tmp"
export GOMODCACHE="${GOMODCACHE:-${CACHE%/*}/gomodcache}"
export GOFLAGS="${GOFLAGS:-} -mod=mod"
rm -rf "${GOBIN}"
mkdir -p "${GOBIN}"
echo "building toxiproxy ${VERSION} (about a minute)..." >&2
go install "github.com/Shopify/toxiproxy/v2/cmd/server@${VERSION}" >&2
mv "${GOBIN}/server" "${BIN}"
rm -rf "${GOBIN}"
echo "${BIN}"
