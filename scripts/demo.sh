#!/usr/bin/env bash
# `make demo`: ipamd end to end on one machine, with Debian's real bridge plugin.
#
# Starts ipamd with an embedded etcd, installs the ipamd-cni shim into a temporary CNI bin directory, creates a
# network namespace, and runs /usr/lib/cni/bridge ADD, CHECK and DEL with "ipam": {"type": "ipamd-cni"}; shows the
# CNI result, the address and routes inside the namespace (ip -n), and ipamd's etcd keys before and after.
# On exit (also on error or Ctrl-C) it removes everything it created: the namespace, the bridge and any veth left
# on it, the temporary directory; it puts /proc/sys/net/ipv4/ip_forward back and stops the processes it started
# (by PID). Needs root (namespaces, bridges) and the Debian packages containernetworking-plugins and iproute2.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
IPAMD="$VENV/bin/ipamd"
BRIDGE_PLUGIN=/usr/lib/cni/bridge
BRIDGE=ipamd-demo0
NS=ipamd-demo-$$
SUBNET=10.99.0.0/24
NETWORK=demo
CONTAINER_ID=demo-$$
IP_FORWARD=/proc/sys/net/ipv4/ip_forward

if [[ -t 1 ]]; then
    say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
    say() { printf '\n== %s\n' "$*"; }
fi
die() { echo "demo: $*" >&2; exit 1; }

[[ "$(id -u)" -eq 0 ]] || die "needs root (it creates a network namespace and a bridge): run 'sudo make demo'"
[[ -x "$BRIDGE_PLUGIN" ]] || die "$BRIDGE_PLUGIN not found: apt-get install containernetworking-plugins"
command -v ip >/dev/null || die "ip not found: apt-get install iproute2"
[[ -x "$IPAMD" ]] || die "$IPAMD not found: run 'make venv' first"
# Never touch what was there before: refuse rather than reuse an existing bridge or a route into the subnet.
if ip link show "$BRIDGE" >/dev/null 2>&1; then
    die "a link named $BRIDGE already exists (left by an earlier run?); remove it with 'ip link del $BRIDGE'"
fi
if ip -4 route show table all | grep -q '10\.99\.0\.'; then
    die "this machine already routes ${SUBNET%.0/24}.x; the demo needs $SUBNET to itself"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ipamd-demo.XXXXXX")
IP_FORWARD_BEFORE=$(cat "$IP_FORWARD")
IPAMD_PID=""
ETCD_PID=""
NS_CREATED=0

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    say "cleaning up"
    if ((NS_CREATED)); then
        ip netns del "$NS" 2>/dev/null && echo "deleted network namespace $NS"
    fi
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        # The bridge did not exist before this run (checked above), so it and what hangs on it are ours.
        for veth in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
            ip link del "$veth" 2>/dev/null && echo "deleted $veth"
        done
        ip link del "$BRIDGE" && echo "deleted bridge $BRIDGE"
    fi
    if [[ "$(cat "$IP_FORWARD")" != "$IP_FORWARD_BEFORE" ]]; then
        echo "$IP_FORWARD_BEFORE" > "$IP_FORWARD" && echo "restored net.ipv4.ip_forward=$IP_FORWARD_BEFORE"
    fi
    if [[ -n "$IPAMD_PID" ]] && kill -0 "$IPAMD_PID" 2>/dev/null; then
        kill -TERM "$IPAMD_PID"  # ipamd stops its embedded etcd itself
        for _ in $(seq 100); do kill -0 "$IPAMD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$IPAMD_PID" 2>/dev/null && kill -KILL "$IPAMD_PID"
        wait "$IPAMD_PID" 2>/dev/null || true
        echo "stopped ipamd (pid $IPAMD_PID)"
    fi
    if [[ -n "$ETCD_PID" ]] && kill -0 "$ETCD_PID" 2>/dev/null; then
        kill -TERM "$ETCD_PID" && echo "stopped the embedded etcd (pid $ETCD_PID)"
    fi
    if ((rc != 0)) && [[ -f "$WORK/ipamd.log" ]]; then
        echo "--- last lines of the ipamd log:"; tail -n 20 "$WORK/ipamd.log"
    fi
    rm -rf "$WORK" && echo "removed $WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "starting ipamd with an embedded etcd (state in $WORK)"
CNI_SOCKET="$WORK/cni.sock"
GRPC_SOCKET="$WORK/ipamd.sock"
"$IPAMD" --embedded-etcd "$WORK/etcd" --node-name demo-node --cni-socket "$CNI_SOCKET" \
    --grpc-socket "$GRPC_SOCKET" --log-level INFO >"$WORK/ipamd.log" 2>&1 &
IPAMD_PID=$!
# Ready = the daemon's gRPC health service says SERVING (first sync with etcd done).
"$PY" - "$GRPC_SOCKET" "$IPAMD_PID" <<'EOF'
import os, sys, time
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sock, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("ipamd exited during start-up")
    if os.path.exists(sock):
        try:
            with grpc.insecure_channel("unix:" + sock) as ch:
                resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                sys.exit(0)
        except grpc.RpcError:
            pass
    time.sleep(0.1)
sys.exit("ipamd not ready after 60 s")
EOF
ENDPOINT=$(sed -n 's/.*embedded etcd at \(http:[^,]*\),.*/\1/p' "$WORK/ipamd.log" | head -n 1)
[[ -n "$ENDPOINT" ]] || die "no 'embedded etcd at' line in the ipamd log"
ETCD_PID=$(ps -o pid= --ppid "$IPAMD_PID" | head -n 1 | tr -d ' ')
sed 's/^/  /' "$WORK/ipamd.log"
ETCDCTL=$("$PY" -c 'from ipamd.embedded import etcd_binary; print(etcd_binary("etcdctl"))')
etcd_keys() { "$ETCDCTL" --endpoints "$ENDPOINT" get --prefix /ipamd/v1/ "$@" | sed -e '/^$/d' -e 's/^/  /'; }

say "installing the CNI plugin: ipamd install-cni $WORK/bin"
"$IPAMD" install-cni "$WORK/bin"
CNI_PATH="$WORK/bin:/usr/lib/cni"

say "creating network namespace $NS"
ip netns add "$NS"
NS_CREATED=1

cat >"$WORK/net.json" <<EOF
{"cniVersion":"1.0.0","name":"$NETWORK","type":"bridge","bridge":"$BRIDGE","isGateway":true,"ipMasq":false,
 "ipam":{"type":"ipamd-cni","socket":"$CNI_SOCKET","ranges":[[{"subnet":"$SUBNET"}]],"routes":[{"dst":"0.0.0.0/0"}]}}
EOF
say "network configuration"
sed 's/^/  /' "$WORK/net.json"

# One CNI call as a runtime makes it: the real bridge plugin, which execs ipamd-cni from CNI_PATH for IPAM.
cni() {
    local command=$1 stdin=$2 out=$3 rc=0
    CNI_COMMAND=$command CNI_CONTAINERID=$CONTAINER_ID CNI_NETNS=/var/run/netns/$NS CNI_IFNAME=eth0 \
        CNI_PATH=$CNI_PATH "$BRIDGE_PLUGIN" <"$stdin" >"$out" || rc=$?
    if ((rc != 0)); then
        echo "bridge $command failed with exit status $rc:"; cat "$out"; echo
        return "$rc"
    fi
    echo "bridge $command: exit status 0"
}
# The configuration plus "prevResult" (what a runtime sends with CHECK and DEL).
with_prev() { "$PY" -c 'import json, sys; c = json.load(open(sys.argv[1])); c["prevResult"] = json.load(open(sys.argv[2])); print(json.dumps(c))' "$@"; }

say "etcd keys before ADD ($ENDPOINT)"
etcd_keys --keys-only

say "CNI ADD: $BRIDGE_PLUGIN with ipam type ipamd-cni"
cni ADD "$WORK/net.json" "$WORK/add.json"
cat "$WORK/add.json"; echo

say "inside the namespace: ip -n $NS addr show eth0"
ip -n "$NS" addr show eth0
say "inside the namespace: ip -n $NS route"
ip -n "$NS" route

say "etcd keys after ADD"
etcd_keys

with_prev "$WORK/net.json" "$WORK/add.json" >"$WORK/prev.json"
say "CNI CHECK (with prevResult)"
cni CHECK "$WORK/prev.json" "$WORK/check.out"

say "CNI DEL (with prevResult)"
cni DEL "$WORK/prev.json" "$WORK/del.out"
echo "links left in $NS:"; ip -n "$NS" -br link | sed 's/^/  /'

say "etcd keys after DEL (the address and its handle are gone; pool, block and node remain)"
etcd_keys --keys-only

say "demo done"
