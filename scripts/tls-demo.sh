#!/usr/bin/env bash
# TLS in front of ringbeat, end to end on loopback (docs/DEPLOY.md,
# Security): haproxy terminates TLS with a throw-away self-signed
# certificate and sends PROXY v2 to ringbeat (--proxy-protocol, --auth
# required); the client example connects with --features tls and a token;
# the events file must show the client's own address (the source haproxy
# saw), which only the PROXY header can tell ringbeat.
#
#   bash scripts/tls-demo.sh        (installs haproxy with apt-get if missing)
#
# Bounded (about a minute); everything started here is stopped and the
# temporary directory removed on exit. Exit 0 = the whole path works.
set -euo pipefail
cd "$(dirname "$0")/.."

tls_port=7943
rb_port=7942
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "tls-demo: FAIL: $*" >&2; exit 1; }

haproxy_bin=$(command -v haproxy || echo /usr/sbin/haproxy)
if [ ! -x "$haproxy_bin" ]; then
  bash scripts/setup.sh --bench
  haproxy_bin=$(command -v haproxy || echo /usr/sbin/haproxy)
  [ -x "$haproxy_bin" ] || fail "haproxy is not installed and could not be (needs root and apt-get)"
fi
command -v openssl >/dev/null || fail "openssl is needed for the throw-away certificate"
echo "tls-demo: $("$haproxy_bin" -v | head -1)"

# Throw-away CA-less self-signed cert for "localhost" (client trusts it via --tls-ca).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" > "$work/haproxy.pem"
head -c 32 /dev/urandom | base64 > "$work/k1.secret"
chmod 600 "$work/k1.secret" "$work/key.pem" "$work/haproxy.pem"

cargo build --release --quiet --bin ringbeat
cargo build --release --quiet --features tls --example client
rb=target/release/ringbeat
client=target/release/examples/client

"$rb" serve --listen 127.0.0.1:$rb_port --proxy-protocol --shards 1 \
  --auth-key "k1=hs256:$work/k1.secret" --events "$work/events.jsonl" \
  2> "$work/ringbeat.log" &
pids+=($!)

cat > "$work/haproxy.cfg" <<CFG
global
    log stdout format raw local0
defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 1m
    timeout server 1m
frontend ringbeat_tls
    bind 127.0.0.1:$tls_port ssl crt $work/haproxy.pem
    default_backend ringbeat
backend ringbeat
    server rb1 127.0.0.1:$rb_port send-proxy-v2
CFG
"$haproxy_bin" -f "$work/haproxy.cfg" -db > "$work/haproxy.log" 2>&1 &
pids+=($!)

for _ in $(seq 50); do
  (exec 3<>/dev/tcp/127.0.0.1/$tls_port) 2>/dev/null && break
  sleep 0.2
done
(exec 3<>/dev/tcp/127.0.0.1/$tls_port) 2>/dev/null || fail "haproxy did not listen; $(tail -3 "$work/haproxy.log")"

"$rb" token --key "k1=hs256:$work/k1.secret" --client-id 42 --ttl 10m > "$work/token"
timeout 20 "$client" localhost:$tls_port 42 4s --token-file "$work/token" \
  --tls-name localhost --tls-ca "$work/cert.pem" > "$work/client.log" 2>&1 || true
echo "tls-demo: client said:"; sed 's/^/  /' "$work/client.log" | head -8

if ! grep -q "Connected" "$work/client.log"; then
  tail -3 "$work/ringbeat.log" >&2
  fail "the client never got WELCOME through haproxy. If ringbeat closed it with a protocol error, the server does not consume the PROXY v2 header on accept yet (src/proxy_v2.rs parses it; the engine must call it first)"
fi
echo "tls-demo: TLS + token through haproxy: ok"

sleep 0.5
[ -s "$work/events.jsonl" ] || fail "no events written"
peer=$(grep '"online"' "$work/events.jsonl" | head -1 | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["peer"])')
echo "tls-demo: events say client 42 came online from $peer"
# haproxy connects to ringbeat from its own ephemeral port; the PROXY header
# carries the client's. haproxy's tcplog line (written when the session
# ends) starts with the client's address: the events must show that one.
sleep 0.5
client_src=$(grep 'ringbeat_tls' "$work/haproxy.log" | grep -o '^127\.0\.0\.1:[0-9]*' | head -1 || true)
[ -n "$client_src" ] || fail "haproxy logged no client session; $(tail -3 "$work/haproxy.log")"
[ "$peer" = "$client_src" ] \
  || fail "the events show $peer, haproxy saw the client at $client_src: the PROXY v2 address is not used"
echo "tls-demo: PASS: the events carry the client's own address ($peer), from the PROXY v2 header"
