#!/usr/bin/env bash
# Print the path of a real Prometheus server binary (tests/integration/test_prometheus_scrape.py) or of its
# promtool (tests/integration/test_alert_rules.py: `promtool test rules`), fetching both once from Debian WITHOUT
# installing them:
#
#   bash scripts/testenv/prometheus.sh            -> /root/.cache/flowdpo/prometheus/2.42.0+ds-5+deb12u1/bin/prometheus
#   bash scripts/testenv/prometheus.sh promtool   -> /root/.cache/flowdpo/prometheus/2.42.0+ds-5+deb12u1/bin/promtool
#
# Why not `apt-get install prometheus`: the package pulls in a system user, a systemd service that starts a
# server on :9090 and a dozen JavaScript packages; tests only need the static Go binary. `apt-get download` +
# `dpkg-deb -x` leaves dpkg's state untouched. The binary is cached under
# ${FLOWDPO_CACHE:-$HOME/.cache/flowdpo}/prometheus/<Debian version>/ so a second call needs no apt at all.
# Set PROMETHEUS_DEB_VERSION to pin another Debian version. Progress goes to stderr; stdout is only the path.
set -euo pipefail

CACHE_ROOT=${FLOWDPO_CACHE:-$HOME/.cache/flowdpo}/prometheus
tool=${1:-prometheus}
case $tool in
  prometheus|promtool) ;;
  *) echo "usage: $0 [prometheus|promtool]" >&2; exit 2 ;;
esac

log() { echo "[prometheus.sh] $*" >&2; }

# Candidate version from the package index (no network). `apt-get update` only when the index has none.
candidate() { apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/ {print $2}'; }

version=${PROMETHEUS_DEB_VERSION:-}
if [[ -z $version ]]; then
  # A cache hit must not need apt: take the newest cached version when apt knows none.
  version=$(candidate)
  if [[ -z $version || $version == "(none)" ]]; then
    cached=$(ls -1 "$CACHE_ROOT" 2>/dev/null | sort -V | tail -n 1 || true)
    if [[ -n $cached && -x $CACHE_ROOT/$cached/bin/prometheus && -x $CACHE_ROOT/$cached/bin/promtool ]]; then
      echo "$CACHE_ROOT/$cached/bin/$tool"; exit 0
    fi
    log "no prometheus candidate in the apt index: running apt-get update"
    apt-get update -qq >&2
    version=$(candidate)
  fi
fi
if [[ -z $version || $version == "(none)" ]]; then
  log "error: apt knows no 'prometheus' package; add a Debian main repository to /etc/apt/sources.list.d"
  exit 1
fi

dest=$CACHE_ROOT/$version
if [[ -x $dest/bin/prometheus && -x $dest/bin/promtool ]]; then
  echo "$dest/bin/$tool"; exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "downloading Debian package prometheus=$version (not installing it)"
# Sandbox user root: the temp dir is ours (0700), so apt's default _apt user could not write to it.
(cd "$work" && apt-get download -qq -o APT::Sandbox::User=root "prometheus=$version" >&2)
deb=$(ls "$work"/prometheus_*.deb)
dpkg-deb -x "$deb" "$work/root"
# Assemble next to the destination, then rename: a concurrent or interrupted call never sees half a cache.
mkdir -p "$CACHE_ROOT"
staging=$(mktemp -d "$CACHE_ROOT/.staging.XXXXXX")
mkdir -p "$staging/bin"
for b in prometheus promtool; do
  cp "$work/root/usr/bin/$b" "$staging/bin/$b"
  chmod 0755 "$staging/bin/$b"
  "$staging/bin/$b" --version >/dev/null 2>&1 || { log "error: extracted $b does not run"; rm -rf "$staging"; exit 1; }
done
# A cache of an older version of this script holds only bin/prometheus: replace it whole.
if [[ -d $dest && ! -x $dest/bin/promtool ]]; then
  rm -rf "$dest"
fi
if ! mv -T "$staging" "$dest" 2>/dev/null; then
  rm -rf "$staging"  # another call won the race; its copy is identical
fi
log "cached $dest/bin/prometheus and promtool"
echo "$dest/bin/$tool"
