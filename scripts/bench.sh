#!/bin/bash
# make bench: accepted messages per second, server CPU per message and peak memory of apusd
# relaying smtp-source's 4 KiB messages to an smtp-sink, at 1 and 20 concurrent senders (and
# whatever BENCH_SESSIONS says). smtp-source and smtp-sink come from Debian's postfix package,
# unpacked under .build/postfix-tools without installing Postfix. Loopback only; every run is
# bounded by its message count and a timeout.
#
# Env: BENCH_SESSIONS ("1 20"), BENCH_MESSAGES (2000), BENCH_SIZE (4096), BENCH_RUNS (3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SESSIONS=${BENCH_SESSIONS:-1 20}
MESSAGES=${BENCH_MESSAGES:-2000}
SIZE=${BENCH_SIZE:-4096}
RUNS=${BENCH_RUNS:-3}
TOOLS=$ROOT/.build/postfix-tools
BIN=$ROOT/.build/release/apusd

if [ ! -x "$TOOLS/usr/sbin/smtp-source" ]; then
  mkdir -p "$TOOLS" && (cd "$TOOLS" && apt-get download postfix >/dev/null 2>&1 && dpkg -x postfix_*.deb .)
fi
export LD_LIBRARY_PATH=$TOOLS/usr/lib/postfix
SOURCE=$TOOLS/usr/sbin/smtp-source
SINK=$TOOLS/usr/sbin/smtp-sink

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d /tmp/apus-bench.XXXXXX)
SINK_PORT=$(free_port); SMTP_PORT=$(free_port)
cleanup() { kill "${APUS_PID:-}" "${SINK_PID:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

SINK_USER=(); [ "$(id -u)" = 0 ] && SINK_USER=(-u nobody)   # smtp-sink refuses to run as root
"$SINK" -c "${SINK_USER[@]}" -m 1000 "127.0.0.1:$SINK_PORT" 1024 > "$WORK/sink.out" 2>&1 &
SINK_PID=$!
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$SINK_PORT") 2>/dev/null && break; sleep 0.1; done
kill -0 "$SINK_PID" || { cat "$WORK/sink.out"; exit 1; }
cat > "$WORK/apus.conf" <<CONF
hostname = bench.localhost
local_domains = localhost
spool_directory = $WORK/spool
mail_directory = $WORK/mail
sasldb_path = $WORK/sasldb2
relay_networks = 127.0.0.0/8
outbound_tls = none
listen = smtp 127.0.0.1:$SMTP_PORT
test_only_outbound_smtp_port = $SINK_PORT
CONF
"$BIN" -c "$WORK/apus.conf" 2> "$WORK/apusd.log" &
APUS_PID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$SMTP_PORT") 2>/dev/null && break; sleep 0.1; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
sink_count() { local t; t=$(tail -c 200 "$WORK/sink.out" | tr '\r' '\n' | grep -o 'mesg=[0-9]*' | tail -1); t=${t#mesg=}; echo "${t:-0}"; }

echo "# $(date -u +%FT%TZ) apusd $(git rev-parse --short HEAD 2>/dev/null) nproc=$(nproc) messages=$MESSAGES size=$SIZE"
echo "# sessions  run  accepted_msgs_per_s  delivered_all_s  server_cpu_ms_per_msg  peak_rss_mib"
"$SOURCE" -s 5 -m 200 -l "$SIZE" -f bench@example.com -t 'sink@[127.0.0.1]' "127.0.0.1:$SMTP_PORT"  # warm-up
sleep 2
for S in $SESSIONS; do
  for RUN in $(seq "$RUNS"); do
    before=$(sink_count)
    c0=$(cpu_ticks "$APUS_PID"); t0=$EPOCHREALTIME
    timeout 300 "$SOURCE" -s "$S" -m "$MESSAGES" -l "$SIZE" -f bench@example.com -t 'sink@[127.0.0.1]' "127.0.0.1:$SMTP_PORT"
    t1=$EPOCHREALTIME
    deadline=$((SECONDS + 120))
    while [ "$(sink_count)" -lt $((before + MESSAGES)) ] && [ $SECONDS -lt $deadline ]; do sleep 0.05; done
    t2=$EPOCHREALTIME; c1=$(cpu_ticks "$APUS_PID")
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$APUS_PID/status")
    echo "# threads=$(ls /proc/$APUS_PID/task | wc -l) fds=$(ls /proc/$APUS_PID/fd | wc -l) queue_dir=$(stat -c %s $WORK/spool/queue) journal=$(stat -c %s $WORK/spool/journal) spool_files=$(ls $WORK/spool/queue | wc -l)" >&2
    awk -v s="$S" -v r="$RUN" -v m="$MESSAGES" -v t0="$t0" -v t1="$t1" -v t2="$t2" -v c="$((c1 - c0))" -v hz="$HZ" -v rss="$rss" \
      'BEGIN { printf "%-9d %-4d %-20.0f %-16.2f %-22.3f %.1f\n", s, r, m/(t1-t0), t2-t0, c/hz*1000/m, rss/1024 }'
    sleep 1
  done
done
