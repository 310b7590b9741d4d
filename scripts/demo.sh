#!/usr/bin/env bash
# npm start: shows the istio-vm agent the way systemd runs it, on this machine, without touching the system.
# Everything lives in a temporary directory (ISTIO_VM_ROOT relocates every VM path there) and is removed at the end,
# also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }

[ -d node_modules ] || { step "installing npm dependencies (npm ci)"; npm ci --no-audit --no-fund; }
step "building istio-vm (esbuild bundle: dist/istio-vm.cjs)"
node scripts/build.mjs
CLI=(node dist/istio-vm.cjs)

ROOT=$(mktemp -d /tmp/istio-vm-demo.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$ROOT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export ISTIO_VM_ROOT="$ROOT"

PORT=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
step "a sample VM configuration under $ROOT"
mkdir -p "$ROOT/var/lib/istio/envoy"
cat > "$ROOT/var/lib/istio/envoy/cluster.env" <<ENV
# what 'istio-vm cluster-env' writes for a cluster
ISTIO_CONTROL_PLANE=istiod
ISTIO_SERVICE_CIDR=10.96.0.0/12
ISTIO_SYSTEM_NAMESPACE=istio-system
CONTROL_PLANE_AUTH_POLICY=MUTUAL_TLS
ENV
cat > "$ROOT/var/lib/istio/envoy/sidecar.env" <<ENV
# per-VM settings
ISTIO_SVC_IP=10.128.0.13
ISTIO_INBOUND_PORTS=3306
STATUS_PORT=$PORT
# this demo runs in your machine's own network namespace: no traffic capture, and only the agent's frame for now
ISTIO_AGENT_COMPONENTS=
ENV
say "\$ istio-vm config --changed"
"${CLI[@]}" config --changed | sed 's/^/   /'

step "the agent in the foreground, with a stand-in for systemd's notify socket"
node scripts/notify-listen.mjs "$ROOT/notify.sock" &
PIDS+=($!)
sleep 0.3
NOTIFY_SOCKET="$ROOT/notify.sock" WATCHDOG_USEC=10000000 "${CLI[@]}" agent 2> >(sed -u 's/^/   [agent] /') &
AGENT_PID=$!
PIDS+=("$AGENT_PID")
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$PORT/healthz/ready" >/dev/null 2>&1 && break; sleep 0.1; done

step "what 'systemctl status' and a monitoring system would see"
say "\$ curl http://127.0.0.1:$PORT/healthz/ready"
curl -s "http://127.0.0.1:$PORT/healthz/ready" | sed 's/^/   /'
say "\$ curl -s http://127.0.0.1:$PORT/metrics | grep istio_vm"
curl -s "http://127.0.0.1:$PORT/metrics" | grep '^istio_vm' | sed 's/^/   /'

step "systemctl reload (SIGHUP): the configuration is read again"
say "\$ kill -HUP $AGENT_PID"
kill -HUP "$AGENT_PID"
sleep 0.5

step "systemctl stop (SIGTERM)"
say "\$ kill -TERM $AGENT_PID"
kill -TERM "$AGENT_PID"
wait "$AGENT_PID" && say "the agent exited with status 0"
say "done. Not shown yet: certificates, traffic capture and Envoy (they start here once built)."
