#!/usr/bin/env bash
# Builds the real control-plane binaries that kube-pim's tests, demo and testenv run:
# kube-apiserver, kube-controller-manager and kubectl from the k8s.io/kubernetes Go module,
# etcd from go.etcd.io/etcd/server/v3, and (for the chart tests) helm.
#
# Why a wrapper module: k8s.io/kubernetes requires every staging module (k8s.io/api,
# k8s.io/apiserver, ...) at v0.0.0 and replaces each with ./staging/src/..., so
# `go install k8s.io/kubernetes/cmd/kube-apiserver@vX` is refused. We create a throwaway module
# that requires k8s.io/kubernetes and replaces every staging module with the published module at
# the matching v0.MINOR.PATCH. The staging list is derived from that release's own go.mod, so a
# new release that adds a staging module (1.36 added k8s.io/streaming) needs no edit here.
#
# Output: $KUBE_PIM_TESTBIN (default ~/.cache/kube-pim/testbin/k8s-<v>_etcd-<v>_helm-<v>)/
#         {kube-apiserver,kube-controller-manager,kubectl,etcd,helm}
# Prints that directory on its last line of stdout. Idempotent: binaries already there are kept.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.19.5}"
CACHE_ROOT="${KUBE_PIM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-pim}"
OUT="${KUBE_PIM_TESTBIN:-$CACHE_ROOT/testbin/k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}}"

log() { echo "testbin: $*" >&2; }

need=()
for b in kube-apiserver kube-controller-manager kubectl etcd helm; do
  [ -x "$OUT/$b" ] || need+=("$b")
done
if [ ${#need[@]} -eq 0 ]; then
  echo "$OUT"
  exit 0
fi
command -v go >/dev/null || { log "go is not installed; install Go >= 1.26 to build the test control plane"; exit 1; }
mkdir -p "$OUT"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false}"
# The machine's own Go builds these releases; never let a go.mod toolchain line fetch another.
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

want() { local b; for b in "${need[@]}"; do [ "$b" = "$1" ] && return 0; done; return 1; }

build_kubernetes() {
  local work="$CACHE_ROOT/src/kubernetes-$K8S_VERSION"
  local minor patch staging_v
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  patch=$(echo "$K8S_VERSION" | cut -d. -f3)
  staging_v="v0.${minor}.${patch}"
  mkdir -p "$work"
  cd "$work"
  if [ ! -f go.mod ]; then
    log "creating wrapper module for k8s.io/kubernetes@$K8S_VERSION in $work"
    go mod init kubepim.local/k8s-testbin >/dev/null 2>&1
  fi
  local upstream
  upstream=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  [ -f "$upstream" ] || { log "could not download k8s.io/kubernetes@$K8S_VERSION go.mod"; exit 1; }
  # Every `k8s.io/<m> => ./staging/...` replacement of the release, pinned to the published module.
  local mods
  mods=$(grep -E '^[[:space:]]*k8s\.io/[A-Za-z0-9._/-]+ => \./staging/' "$upstream" | awk '{print $1}')
  [ -n "$mods" ] || { log "no staging replacements found in $upstream"; exit 1; }
  local m args=()
  for m in $mods; do args+=("-replace=$m=$m@$staging_v"); done
  go mod edit "${args[@]}"
  # Dependencies' godebug lines are ignored by Go: copy the release's own into the wrapper.
  local gd
  gd=$(grep -E '^godebug ' "$upstream" || true)
  if [ -n "$gd" ]; then
    grep -vE '^godebug ' go.mod >go.mod.tmp && mv go.mod.tmp go.mod
    echo "$gd" >>go.mod
  fi
  local goline
  goline=$(grep -E '^go [0-9]' "$upstream" | awk '{print $2}')
  go mod edit -go="$goline"
  log "resolving k8s.io/kubernetes@$K8S_VERSION (staging $staging_v, $(echo "$mods" | wc -l) modules)"
  go get "k8s.io/kubernetes@$K8S_VERSION" >/dev/null 2>&1 || go get "k8s.io/kubernetes@$K8S_VERSION"
  local pkgs=()
  want kube-apiserver && pkgs+=(k8s.io/kubernetes/cmd/kube-apiserver)
  want kube-controller-manager && pkgs+=(k8s.io/kubernetes/cmd/kube-controller-manager)
  want kubectl && pkgs+=(k8s.io/kubernetes/cmd/kubectl)
  [ ${#pkgs[@]} -gt 0 ] || return 0
  # Record the packages as tool dependencies so `go mod tidy` keeps every module they need.
  local p
  for p in "${pkgs[@]}"; do go get -tool "$p@$K8S_VERSION" >/dev/null 2>&1 || go get -tool "$p@$K8S_VERSION"; done
  local vpkg=k8s.io/component-base/version
  local ldflags="-s -w -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean"
  ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  log "building ${pkgs[*]} (cold: 10-25 minutes on 2 cores)"
  go build -trimpath -ldflags "$ldflags" -o "$OUT/" "${pkgs[@]}"
}

build_etcd() {
  local work="$CACHE_ROOT/src/etcd-$ETCD_VERSION"
  mkdir -p "$work"
  cd "$work"
  [ -f go.mod ] || go mod init kubepim.local/etcd-testbin >/dev/null 2>&1
  log "building etcd $ETCD_VERSION"
  go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 || go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  go build -trimpath -ldflags "-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3
}

build_helm() {
  local work="$CACHE_ROOT/src/helm-$HELM_VERSION"
  mkdir -p "$work"
  cd "$work"
  [ -f go.mod ] || go mod init kubepim.local/helm-testbin >/dev/null 2>&1
  log "building helm $HELM_VERSION"
  go get -tool "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >/dev/null 2>&1 || go get -tool "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" -o "$OUT/helm" helm.sh/helm/v3/cmd/helm
}

if want kube-apiserver || want kube-controller-manager || want kubectl; then (build_kubernetes); fi
if want etcd; then (build_etcd); fi
if want helm; then (build_helm); fi
for b in kube-apiserver kube-controller-manager kubectl etcd helm; do
  [ -x "$OUT/$b" ] || { log "missing $OUT/$b after build"; exit 1; }
done
log "binaries ready in $OUT"
echo "$OUT"
