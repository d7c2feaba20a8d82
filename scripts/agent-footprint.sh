#!/usr/bin/env bash
# Agent footprint for telematics units: stripped size of the size-optimised agent binary, and
# RSS / CPU of one agent process idle (keep-alive only) and at 10 requests/s, beside
# `mosquitto_sub` holding one mTLS connection to the same gateway as the minimal-client reference.
#
#   bash scripts/agent-footprint.sh            # prints a Markdown table
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE_SECONDS=${IDLE_SECONDS:-20}
LOAD_SECONDS=${LOAD_SECONDS:-20}
command -v mosquitto_sub >/dev/null || apt-get install -y mosquitto-clients >/dev/null

cargo build -q --profile release-agent -p vehicle-agent
cargo build -q --release -p demo -p certs
AGENT=target/release-agent/vehicle-agent
DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$DIR"' EXIT

# The whole system from the demo (its own simulated car uses another VIN).
target/release/demo --dir "$DIR/certs" --mqtt-listen 127.0.0.1:18883 --adapter-listen 127.0.0.1:15061 \
  --agent-listen 127.0.0.1:15051 > "$DIR/demo.log" 2>&1 &
for _ in $(seq 1 100); do grep -q "Running." "$DIR/demo.log" && break; sleep 0.2; done
VIN=WBA3B5C50DF123456
target/release/certs vehicle "$VIN" --out "$DIR/certs" > /dev/null
cat > "$DIR/agent.toml" <<TOML
gateway = "localhost:18883"
ca_cert = "$DIR/certs/ca.pem"
cert = "$DIR/certs/$VIN.pem"
key = "$DIR/certs/$VIN.key"
local_listen = "127.0.0.1:15052"
state_dir = "$DIR/agent-state"
keep_alive = "30s"
TOML

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
HZ=$(getconf CLK_TCK)

RUST_LOG=info "$AGENT" run --config "$DIR/agent.toml" > "$DIR/agent.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 1 100); do grep -q "connected to the gateway" "$DIR/agent.log" && break; sleep 0.2; done
t0=$(cpu_ticks $AGENT_PID); sleep "$IDLE_SECONDS"; t1=$(cpu_ticks $AGENT_PID)
idle_rss=$(rss_kb $AGENT_PID)
idle_cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$HZ" -v s="$IDLE_SECONDS" 'BEGIN {printf "%.2f", (b - a) * 100 / hz / s}')

# 10 requests/s from an in-car app (one process per call; only the agent's CPU is counted).
t0=$(cpu_ticks $AGENT_PID)
for _ in $(seq 1 $((LOAD_SECONDS * 10))); do
  "$AGENT" call --agent http://127.0.0.1:15052 /parking.v1.ParkingPayment/ListNearbyLots \
    '{"near":{"latitude":31.23,"longitude":121.47}}' > /dev/null &
  sleep 0.1
done
t1=$(cpu_ticks $AGENT_PID)
load_rss=$(rss_kb $AGENT_PID)
load_cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$HZ" -v s="$LOAD_SECONDS" 'BEGIN {printf "%.2f", (b - a) * 100 / hz / s}')

# The minimal-client reference: mosquitto_sub on one mTLS connection (same certificate, so the
# agent is stopped first).
kill $AGENT_PID; wait $AGENT_PID 2>/dev/null || true
mosquitto_sub -V mqttv311 -h localhost -p 18883 --cafile "$DIR/certs/ca.pem" --cert "$DIR/certs/$VIN.pem" \
  --key "$DIR/certs/$VIN.key" -i "$VIN" -k 30 -t "/tenants/$VIN/v1/resp" > /dev/null 2>&1 &
SUB_PID=$!
sleep 2 # mosquitto_sub prints nothing on connect; give it the handshake time
t0=$(cpu_ticks $SUB_PID); sleep "$IDLE_SECONDS"; t1=$(cpu_ticks $SUB_PID)
sub_rss=$(rss_kb $SUB_PID)
sub_cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$HZ" -v s="$IDLE_SECONDS" 'BEGIN {printf "%.2f", (b - a) * 100 / hz / s}')

size=$(stat -c %s "$AGENT")
echo "| | agent (release-agent profile) | mosquitto_sub (1 mTLS connection) |"
echo "|---|---:|---:|"
echo "| stripped binary | $((size / 1024)) KiB | $(( $(stat -c %s "$(command -v mosquitto_sub)") / 1024 )) KiB (+ shared libmosquitto, libssl) |"
echo "| RSS, idle (keep-alive only) | ${idle_rss} KiB | ${sub_rss} KiB |"
echo "| CPU, idle over ${IDLE_SECONDS}s | ${idle_cpu}% of a core | ${sub_cpu}% of a core |"
echo "| RSS at 10 req/s | ${load_rss} KiB | |"
echo "| CPU at 10 req/s over ${LOAD_SECONDS}s | ${load_cpu}% of a core | |"
