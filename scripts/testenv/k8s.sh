#!/usr/bin/env bash
# k8s.sh — an offline, local, REAL Kubernetes 1.20 control plane for the operator's e2e tests.
#
# No Docker engine is available where the tests run, so kind/k3d/minikube are out. Instead this builds
# kube-apiserver, kube-controller-manager and kube-scheduler from the Debian bookworm source package
# `kubernetes` (Go dependencies vendored, so no internet is needed beyond the Debian mirror), takes etcd from
# Debian's etcd-server and kubectl from Debian's kubernetes-client .deb, and runs them as plain processes on
# 127.0.0.1. There is no kubelet: e2e/support/kubelet.py plays that part.
#
#   build : one-time build, cached under $FLOWDPO_CACHE/k8s-testenv/<debian version>/bin (idempotent; a rerun
#           after a failure resumes from the Go build cache)
#   start : etcd + kube-apiserver (+ controller-manager unless KCM=0, + scheduler if SCHED=1); applies $CRDS
#           (a file or folder) BEFORE the controller-manager starts
#   stop  : stop what `start` started in this work dir (by PID)
#   env   : print `export KUBECONFIG=... PATH=...` for a shell
#
# Environment:
#   FLOWDPO_CACHE          cache root (default ~/.cache/flowdpo)
#   K8S_TESTENV_WORK       runtime state: pki, logs, etcd data, pid files (default /tmp/flowdpo-k8s-testenv)
#   K8S_TESTENV_PORT       apiserver https port (16443); controller-manager and scheduler health ports default
#                          to +1 / +2 (K8S_TESTENV_KCM_PORT, K8S_TESTENV_SCHED_PORT)
#   K8S_TESTENV_ETCD_PORT  etcd client port (12379); peer port K8S_TESTENV_ETCD_PEER_PORT defaults to +1
#   K8S_TESTENV_TIMEOUT    seconds to wait for each component to become healthy (120)
#   K8S_DEB_VERSION        Debian version of the `kubernetes` source package
#   KEEP_BUILD_TREE=1      keep the ~2 GB build tree after a successful build
#
# Three fixes are needed to build Debian's 1.20 sources with Debian's Go 1.19 (see build()).
set -euo pipefail

K8S_DEB_VERSION=${K8S_DEB_VERSION:-1.20.5+really1.20.2-1.1+deb12u1}
CACHE=${FLOWDPO_CACHE:-$HOME/.cache/flowdpo}/k8s-testenv/$K8S_DEB_VERSION
BIN=$CACHE/bin
BUILD=$CACHE/build                       # source tree, GOPATH, Go build cache: removed after success
WORK=${K8S_TESTENV_WORK:-/tmp/flowdpo-k8s-testenv}
RUN=$WORK/run
PKI=$WORK/pki
PORT=${K8S_TESTENV_PORT:-16443}
KCM_PORT=${K8S_TESTENV_KCM_PORT:-$((PORT + 1))}
SCHED_PORT=${K8S_TESTENV_SCHED_PORT:-$((PORT + 2))}
ETCD_PORT=${K8S_TESTENV_ETCD_PORT:-12379}
ETCD_PEER_PORT=${K8S_TESTENV_ETCD_PEER_PORT:-$((ETCD_PORT + 1))}
TIMEOUT=${K8S_TESTENV_TIMEOUT:-120}
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd)

log() { echo "[k8s-testenv $(date +%T)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

have_binaries() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x $BIN/$b ]] || return 1; done
}

as_root() {  # apt needs root; use sudo when we are not
  if [[ $EUID -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null; then sudo -n "$@"   # -n: fail, never wait for a password (CI)
  else die "'$*' needs root (or sudo) to install the build toolchain from apt"; fi
}

write_deb_src_list() {  # a deb-src twin of the configured Debian sources (deb822 or one-line format)
  if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources
  elif [[ -f /etc/apt/sources.list ]]; then
    sed -n 's/^deb /deb-src /p' /etc/apt/sources.list
  else
    die "no Debian apt sources found (/etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list)"
  fi
}

build() {
  if have_binaries; then log "cached binaries present in $BIN"; return 0; fi
  mkdir -p "$CACHE"
  # Two builds at once (a pytest session and scripts/test.sh) would trample each other's tree.
  exec 9>"$CACHE/.build.lock"
  flock 9
  if have_binaries; then log "binaries were built by a concurrent run: $BIN"; return 0; fi
  command -v apt-get >/dev/null || die "apt-get not found: the control plane is built from Debian packages"
  local t0=$SECONDS
  trap 'log "build FAILED at line $LINENO; rerun \`$0 build\` to resume (Go build cache kept in $BUILD)"' ERR

  export DEBIAN_FRONTEND=noninteractive
  log "apt: installing toolchain (golang-go, etcd-server, dpkg-dev, ...)"
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends golang-go etcd-server dpkg-dev openssl curl rsync \
    ca-certificates golang-github-modern-go-reflect2-dev >/dev/null

  mkdir -p "$BUILD/src"
  cd "$BUILD/src"
  if [[ ! -f .downloaded ]]; then  # the stamp is written only once every download is complete
    rm -f kubernetes_* kubernetes-client_*
    log "apt: fetching source package kubernetes=$K8S_DEB_VERSION (temporary deb-src entry)"
    local srclist=/etc/apt/sources.list.d/flowdpo-k8s-testenv-src.sources
    [[ -f /etc/apt/sources.list.d/debian.sources ]] || srclist=/etc/apt/sources.list.d/flowdpo-k8s-testenv-src.list
    write_deb_src_list | as_root tee "$srclist" >/dev/null
    # shellcheck disable=SC2064  # expand now: remove exactly this file, whatever happens next
    trap "as_root rm -f '$srclist'" EXIT
    as_root apt-get update -qq
    apt-get source -qq --download-only "kubernetes=$K8S_DEB_VERSION"
    # kubectl: Debian's binary; `apt-get install kubernetes-client` would conflict with other kubectl packages
    apt-get download -qq "kubernetes-client=$K8S_DEB_VERSION"
    as_root rm -f "$srclist"
    trap - EXIT
    as_root apt-get update -qq
    touch .downloaded
  fi

  local stage=$CACHE/bin.partial          # binaries appear in $BIN all at once, at the very end
  rm -rf "$stage" kc k8s
  mkdir -p "$stage"
  dpkg-deb -x kubernetes-client_*.deb kc
  cp kc/usr/bin/kubectl "$stage/kubectl"
  cp "$(command -v etcd)" "$stage/etcd"    # so a cache hit needs no apt at all
  dpkg-source -q -x kubernetes_*.dsc k8s

  # Fix 1: Go >= 1.18 SIGSEGVs (reflect2.UnsafeIterate, on the first custom-object request) with the vendored
  # github.com/modern-go/reflect2 v1.0.1; Debian ships 1.0.2.
  rsync -a --delete --exclude '*_test.go' --exclude 'test*' \
    /usr/share/gocode/src/github.com/modern-go/reflect2/ k8s/vendor/github.com/modern-go/reflect2/
  # Fix 2: 1.20 builds in GOPATH mode only (module mode: "updates to go.mod needed, disabled by -mod=vendor").
  export GOPATH=$BUILD/gopath GOCACHE=$BUILD/gocache GO111MODULE=off CGO_ENABLED=0 GOFLAGS= GOPROXY=off
  mkdir -p "$GOPATH/src/k8s.io"
  ln -sfn "$BUILD/src/k8s" "$GOPATH/src/k8s.io/kubernetes"
  cd "$GOPATH/src/k8s.io/kubernetes"
  # Fix 3: pkg/generated/openapi/zz_generated.openapi.go is not in the tarball (`make generated_files` makes it).
  log "generating openapi definitions"
  go build -o "$BUILD/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
  local dirs
  dirs=$(find -H . -not \( \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune \) -type f -name '*.go' \
    | sed 's|^./staging/src|vendor|; s|^./||' | grep -v -E '^vendor/k8s.io/(code-generator|sample-apiserver)/' \
    | xargs grep -l '+k8s:openapi-gen=' | xargs -n1 dirname | LC_ALL=C sort -u \
    | sed 's|^|k8s.io/kubernetes/|' | paste -sd, -)
  "$BUILD/openapi-gen" --logtostderr -i "$dirs" -p k8s.io/kubernetes/pkg/generated/openapi \
    -O zz_generated.openapi -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
    -r "$BUILD/openapi-violations.report"

  local ldflags="-s -w" p
  for p in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
    ldflags+=" -X $p.gitVersion=v1.20.2 -X $p.gitMajor=1 -X $p.gitMinor=20 -X $p.gitTreeState=archive"
    ldflags+=" -X $p.gitCommit=faecb196815e248d3ecfb03c680a4507229c2a56 -X $p.buildDate=2021-01-13T13:20:00Z"
  done
  log "go build kube-apiserver, kube-controller-manager, kube-scheduler (the slow part: ~10 min on 2 cores)"
  go build -trimpath -ldflags "$ldflags" -o "$stage/" \
    ./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler

  cd "$CACHE"
  rm -rf "$BIN"
  mv "$stage" "$BIN"
  trap - ERR
  log "built in $((SECONDS - t0)) s: $(ls "$BIN" | tr '\n' ' ')"
  [[ ${KEEP_BUILD_TREE:-0} == 1 ]] || rm -rf "$BUILD"
}

kubeconfig() {  # <user> <token>
  cat <<EOF
apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: "https://127.0.0.1:$PORT", certificate-authority: "$PKI/ca.crt"}}]
users: [{name: $1, user: {token: "$2"}}]
contexts: [{name: $1, context: {cluster: local, user: $1, namespace: default}}]
current-context: $1
EOF
}

pki() {  # throwaway CA, serving cert, service-account keypair, static tokens, kubeconfigs
  mkdir -p "$PKI"
  if [[ ! -f $PKI/tokens.csv ]]; then
    (
      cd "$PKI"
      openssl genrsa -out ca.key 2048 2>/dev/null
      openssl req -x509 -new -nodes -key ca.key -subj /CN=flowdpo-k8s-testenv-ca -days 3650 -out ca.crt
      openssl genrsa -out apiserver.key 2048 2>/dev/null
      openssl req -new -key apiserver.key -subj /CN=kube-apiserver -out apiserver.csr
      printf '%s\n' 'subjectAltName=IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes.default.svc' \
        'extendedKeyUsage=serverAuth' > san.ext
      openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile san.ext \
        -out apiserver.crt 2>/dev/null
      openssl genrsa -out sa.key 2048 2>/dev/null
      openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
      { echo "$(openssl rand -hex 16),admin,uid-admin,\"system:masters\""
        echo "$(openssl rand -hex 16),system:kube-controller-manager,uid-kcm,"
        echo "$(openssl rand -hex 16),system:kube-scheduler,uid-sched,"
        echo "$(openssl rand -hex 16),limited-user,uid-limited,"; } > tokens.csv.tmp
      mv tokens.csv.tmp tokens.csv
    )
  fi
  # Kubeconfigs are rewritten on every start: the ports may differ from the last start in this work dir.
  local user file
  for user in admin:admin system:kube-controller-manager:kcm system:kube-scheduler:sched limited-user:limited; do
    file=${user##*:}
    user=${user%:*}
    kubeconfig "$file" "$(awk -F, -v u="$user" '$2==u {print $1}' "$PKI/tokens.csv")" > "$PKI/$file.kubeconfig"
  done
}

wait_until() {  # <what> <pid file> <command...>: poll until the command succeeds; fail fast if the process died
  local what=$1 pidfile=$2 deadline=$((SECONDS + TIMEOUT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      tail -n 30 "${pidfile%.pid}.log" >&2 || true
      stop
      die "$what exited during startup (log: ${pidfile%.pid}.log)"
    fi
    if ((SECONDS > deadline)); then
      tail -n 30 "${pidfile%.pid}.log" >&2 || true
      stop
      die "$what not healthy after ${TIMEOUT}s (log: ${pidfile%.pid}.log)"
    fi
    sleep 0.2
  done
}

launch() {  # <name> <command...>: background process with log and pid file under $RUN
  local name=$1
  shift
  "$@" > "$RUN/$name.log" 2>&1 &
  echo $! > "$RUN/$name.pid"
}

start() {
  local tool
  for tool in curl openssl; do command -v $tool >/dev/null || die "$tool is required (apt-get install $tool)"; done
  have_binaries || build
  [[ -z ${CRDS:-} ]] || CRDS=$(realpath "$CRDS")
  pki
  mkdir -p "$RUN"
  for tool in etcd apiserver kcm sched; do
    [[ -f $RUN/$tool.pid ]] && kill -0 "$(cat "$RUN/$tool.pid")" 2>/dev/null \
      && die "$tool is already running in $WORK (pid $(cat "$RUN/$tool.pid")); run '$0 stop' first"
  done
  rm -rf "$RUN/etcd-data"
  local t0=$SECONDS kubectl=("$BIN/kubectl" --kubeconfig "$PKI/admin.kubeconfig")

  launch etcd "$BIN/etcd" --name local --data-dir "$RUN/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "local=http://127.0.0.1:$ETCD_PEER_PORT"
  wait_until etcd "$RUN/etcd.pid" curl -sf "http://127.0.0.1:$ETCD_PORT/health"

  launch apiserver "$BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$PORT" --insecure-port=0 \
    --endpoint-reconciler-type=none \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" --client-ca-file="$PKI/ca.crt" \
    --token-auth-file="$PKI/tokens.csv" --authorization-mode=RBAC --service-cluster-ip-range=10.0.0.0/24 \
    --service-account-issuer=https://kubernetes.default.svc --api-audiences=https://kubernetes.default.svc \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --cert-dir="$RUN/certs" --allow-privileged=true --profiling=false
  wait_until kube-apiserver "$RUN/apiserver.pid" curl -sf --cacert "$PKI/ca.crt" "https://127.0.0.1:$PORT/readyz"
  log "etcd + kube-apiserver ready in $((SECONDS - t0)) s"

  # CRDs go in BEFORE the controller-manager: its garbage collector discovers resource types at startup and
  # then only every 30 s, so owner-reference GC of custom resources' children would lag by that much.
  if [[ -n ${CRDS:-} ]]; then
    "${kubectl[@]}" apply -f "$CRDS" >/dev/null
    "${kubectl[@]}" wait --for condition=established --timeout="${TIMEOUT}s" crd --all >/dev/null
  fi

  if [[ ${KCM:-1} == 1 ]]; then
    launch kcm "$BIN/kube-controller-manager" --kubeconfig="$PKI/kcm.kubeconfig" \
      --authentication-kubeconfig="$PKI/kcm.kubeconfig" --authorization-kubeconfig="$PKI/kcm.kubeconfig" \
      --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --port=0 --cert-dir="$RUN/certs-kcm" --leader-elect=false \
      --use-service-account-credentials=true --service-account-private-key-file="$PKI/sa.key" \
      --root-ca-file="$PKI/ca.crt" \
      --controllers='*,-nodeipam,-nodelifecycle,-ttl,-route,-cloud-node-lifecycle,-service'
    wait_until kube-controller-manager "$RUN/kcm.pid" curl -skf "https://127.0.0.1:$KCM_PORT/healthz"
    # The token controller must have minted the default ServiceAccount's secret before pods can be created.
    wait_until "the default ServiceAccount token" "$RUN/kcm.pid" \
      bash -c '"$@" get sa default -o jsonpath="{.secrets[0].name}" | grep -q .' _ "${kubectl[@]}"
    log "kube-controller-manager ready"
  fi

  if [[ ${SCHED:-0} == 1 ]]; then
    launch sched "$BIN/kube-scheduler" --kubeconfig="$PKI/sched.kubeconfig" \
      --authentication-kubeconfig="$PKI/sched.kubeconfig" --authorization-kubeconfig="$PKI/sched.kubeconfig" \
      --leader-elect=false --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --port=0
    wait_until kube-scheduler "$RUN/sched.pid" curl -skf "https://127.0.0.1:$SCHED_PORT/healthz"
  fi
  log "control plane up in $((SECONDS - t0)) s; eval \"\$($0 env)\" for KUBECONFIG and kubectl"
}

stop() {  # reverse start order; SIGTERM, then SIGKILL after 10 s
  local c pid i
  for c in sched kcm apiserver etcd; do
    [[ -f $RUN/$c.pid ]] || continue
    pid=$(cat "$RUN/$c.pid")
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    rm -f "$RUN/$c.pid"
  done
}

env_() {
  printf 'export KUBECONFIG=%q\nexport PATH=%q:$PATH\n' "$PKI/admin.kubeconfig" "$BIN"
}

case ${1:-} in
  build | start | stop) "$1" ;;
  env) env_ ;;
  bin-dir) echo "$BIN" ;;
  *) echo "usage: $0 build|start|stop|env|bin-dir" >&2; exit 2 ;;
esac
