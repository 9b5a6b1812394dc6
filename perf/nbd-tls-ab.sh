#!/usr/bin/env bash
# Throughput of NBD over TLS against plain text, for two `ringpool serve` binaries (A and B):
# nbdcopy (one connection, 16 requests in flight) copies a 1 GiB volume to null: (the server
# reads and sends) or a 1 GiB random file into it (DIR_W=1: the server receives and writes),
# once in plain text and once through STARTTLS, alternating A and B in every round.
#
# Usage: perf/nbd-tls-ab.sh A_BIN B_BIN      knobs: ROUNDS [3]  DIR_W [0]  DIR [/tmp/nbdtls]
# Prints per call the throughput and the server's CPU seconds, and the load average.
# Needs openssl (a throw-away CA and server certificate are made in DIR) and nbdcopy, fio.
set -uo pipefail
A=${1:?A binary} B=${2:?B binary}
ROUNDS=${ROUNDS:-3} DIR_W=${DIR_W:-0} D=${DIR:-/tmp/nbdtls}
mkdir -p "$D/pki"
if [[ ! -f $D/pki/server-cert.pem ]]; then
  (
    cd "$D/pki" || exit 1
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -days 2 -subj "/CN=nbd-tls-ab CA" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
      -keyout ca-key.pem -out ca-cert.pem
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nsubjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl req "${ec[@]}" -subj "/CN=localhost" -keyout server-key.pem -out server.csr
    openssl x509 -req -in server.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
      -extfile server.ext -out server-cert.pem
  ) >/dev/null 2>&1 || { echo "openssl failed" >&2; exit 1; }
fi
[[ $DIR_W == 1 && ! -f $D/src.img ]] && head -c 1G /dev/urandom >"$D/src.img"
declare -A PID
trap 'for s in "${!PID[@]}"; do kill "${PID[$s]}" 2>/dev/null; done' EXIT
for s in A B; do
  bin=${!s} d=$D/$s
  rm -rf "$d"; mkdir -p "$d"
  export RINGPOOL_STATE_DIR=$d/state
  truncate -s 2G "$d/pool.img"
  "$bin" create --size 2G "tls$s" "$d/pool.img" >/dev/null && "$bin" volume create -s 1G "tls$s/v" >/dev/null ||
    { echo "pool set-up failed for $s" >&2; exit 1; }
  setsid "$bin" serve --listen 127.0.0.1:0 --socket "$d/sock" --tls on \
    --tls-cert "$D/pki/server-cert.pem" --tls-key "$D/pki/server-key.pem" >"$d/log" 2>&1 </dev/null &
  PID[$s]=$!
  u="nbd+unix:///tls$s/v?socket=$d/sock"
  for _ in $(seq 50); do nbdinfo --size "$u" >/dev/null 2>&1 && break; sleep 0.2; done
  fio --name=fill --ioengine=nbd --uri="$u" --rw=write --bs=1M --iodepth=8 >/dev/null 2>&1
  qemu-io -f raw -c flush "$u" >/dev/null || { echo "server $s does not answer" >&2; exit 1; }
done
echo "load $(cut -d' ' -f1-3 /proc/loadavg)  direction: $([[ $DIR_W == 1 ]] && echo write || echo read)"
for r in $(seq "$ROUNDS"); do
  for s in A B; do
    for mode in plain tls; do
      u="nbd+unix:///tls$s/v?socket=$D/$s/sock"
      [[ $mode == tls ]] && u="nbds+unix:///tls$s/v?socket=$D/$s/sock&tls-certificates=$D/pki"
      if [[ $DIR_W == 1 ]]; then src=$D/src.img dst=$u; else src=$u dst=null:; fi
      c0=$(awk '{print $14 + $15}' "/proc/${PID[$s]}/stat")
      t0=$(date +%s.%N)
      nbdcopy -C 1 --requests=16 "$src" "$dst" || echo "nbdcopy failed ($s $mode)"
      t1=$(date +%s.%N)
      c1=$(awk '{print $14 + $15}' "/proc/${PID[$s]}/stat")
      awk -v r="$r" -v s="$s" -v m="$mode" -v t0="$t0" -v t1="$t1" -v c=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" \
        'BEGIN {printf "round %d %s %-5s %6.0f MiB/s  server CPU %.2f s\n", r, s, m, 1024 / (t1 - t0), c / hz}'
    done
  done
done
echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
