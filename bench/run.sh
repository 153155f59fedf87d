#!/usr/bin/env bash
# Peer benchmark: sftp-mirror against OpenSSH sftp, rclone and lftp on the same
# data, the same private sshd on loopback, in one run, tools alternating.
#
#   bash bench/run.sh                    # full run, writes bench/RESULTS.md
#   BENCH_SCALE=smoke bash bench/run.sh  # tiny data, one run (CI), writes to the work dir
#   BENCH_LARGE=100000 bash bench/run.sh # adds a fresh and a no-op pass over a tree of that many files
#                                        # (1-100 B, 100 per folder; BENCH_LARGE_RUNS runs each, default 1)
#   BENCH_ONLY="big capped-64 capped-big" bash bench/run.sh  # only these transfer scenarios
#
# Needs root on a fresh Debian to install the peers (apt-get). Loopback only.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCALE=${BENCH_SCALE:-full}
if [ "$SCALE" = smoke ]; then
  RUNS=${BENCH_RUNS:-1}; BIG_MB=4; SMALL_N=200; MED_N=20; INTAKE_SECS=2; LAT_N=50
else
  RUNS=${BENCH_RUNS:-3}; BIG_MB=1024; SMALL_N=10000; MED_N=500; INTAKE_SECS=10; LAT_N=1000
fi
LARGE_N=${BENCH_LARGE:-0}
W=$(mktemp -d /tmp/sftp-mirror-bench.XXXXXX)
OUT=${BENCH_OUT:-$([ "$SCALE" = smoke ] && echo "$W/RESULTS.md" || echo "$ROOT/bench/RESULTS.md")}
say() { printf '==> %s\n' "$*" >&2; }
want() { [ -z "${BENCH_ONLY:-}" ] || [[ " $BENCH_ONLY " == *" $1 "* ]]; }

need=()
for c in rclone lftp wrk python3; do command -v "$c" >/dev/null 2>&1 || need+=("$c"); done
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v sftp >/dev/null 2>&1 || need+=(openssh-client)
[ -x /usr/bin/time ] || need+=(time)
command -v webhook >/dev/null 2>&1 || need+=(webhook)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

say "building sftp-mirror (release)"
(cd "$ROOT" && cargo build --release --locked --bin sftp-mirror --example loadgen 2>&1 | tail -1 >&2)
BIN="$ROOT/target/release/sftp-mirror"
LOADGEN="$ROOT/target/release/examples/loadgen"

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

say "private sshd"
trap 'kill $(cat "$W/sshd.pid" 2>/dev/null) 2>/dev/null || true; [ -n "${DPID:-}" ] && kill $DPID 2>/dev/null || true; [ -n "${HPID:-}" ] && kill $HPID 2>/dev/null || true' EXIT
start_sshd "$W"
SSHOPTS="-i $W/client_key -o UserKnownHostsFile=$W/known_hosts -o StrictHostKeyChecking=yes -o BatchMode=yes"

say "data: ${BIG_MB} MiB file, ${SMALL_N} files of 1-8 KiB, ${MED_N} x 1 MiB (deterministic)"
python3 - "$W/data" "$BIG_MB" "$SMALL_N" "$MED_N" "$LARGE_N" <<'EOF'
import os, random, sys
base, big_mb, small_n, med_n, large_n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
r = random.Random(20261128)
os.makedirs(f"{base}/big", exist_ok=True)
block = r.randbytes(1 << 20)
with open(f"{base}/big/big.bin", "wb") as f:
    for i in range(big_mb):
        f.write(bytes([i % 251]) + block[1:])
for i in range(small_n):
    d = f"{base}/small/d{i // 100:03}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i % 100:03}.bin", "wb") as f:
        f.write(r.randbytes(r.randint(1024, 8192)))
os.makedirs(f"{base}/medium", exist_ok=True)
for i in range(med_n):
    with open(f"{base}/medium/m{i:03}.bin", "wb") as f:
        f.write(bytes([i % 251]) + block[1:])
for i in range(large_n):
    d = f"{base}/large/d{i // 100:05}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i % 100:03}", "wb") as f:
        f.write(b"x" * (1 + i % 100))
EOF

config() { # remote_root mirror [listen]
  bench_config "$W" "$1" "$2" "${3:-127.0.0.1:0}" "$W/journal.db" "bench secret"
}

# tool scenario src out  -> runs one transfer
transfer() {
  local tool=$1 src=$2 out=$3 kind=$4
  case "$tool" in
    sftp-mirror) "$BIN" --config "$(config "$src" "$out")" -q reconcile --json >/dev/null ;;
    openssh-sftp)
      # `get -r src out` nests src inside an existing out: copy its entries instead.
      mkdir -p "$out"
      if [ "$kind" = file ]; then echo "get $src/big.bin $out/big.bin" > "$W/batch"; else echo "get -r $src/* $out" > "$W/batch"; fi
      sftp -q $SSHOPTS -P "$PORT" -b "$W/batch" root@127.0.0.1 >/dev/null ;;
    rclone)
      rclone copy ":sftp:$src" "$out" --sftp-host 127.0.0.1 --sftp-port "$PORT" --sftp-user root \
        --sftp-key-file "$W/client_key" --sftp-known-hosts-file "$W/known_hosts" --sftp-disable-hashcheck \
        --transfers 4 --config /dev/null -q ;;
    lftp)
      mkdir -p "$out"
      local cmd="mirror --parallel=4 $src $out"
      [ "$kind" = file ] && cmd="pget -n 4 -O $out $src/big.bin"
      lftp -c "set sftp:connect-program 'ssh -a -x $SSHOPTS'; set net:max-retries 1; open sftp://root:x@127.0.0.1:$PORT; $cmd" >/dev/null ;;
  esac
}

TOOLS=(sftp-mirror openssh-sftp rclone lftp)
: > "$W/times.tsv"
# A fresh run writes into a folder of its own and no tree is deleted until the
# end: on ext4 without a journal (this machine's root) every new inode skips
# inodes deleted in the last 60-360 s, one by one, so creating 10,000 files
# right after deleting 10,000 measures the file system, not the tool.
measure() { # scenario tool src kind out
  local scen=$1 tool=$2 src=$3 kind=$4 out=$5
  /usr/bin/time -f "%e %U %S %M" -o "$W/t" bash -c "$(declare -f transfer config bench_config); BIN=$BIN W=$W PORT=$PORT SSHOPTS='$SSHOPTS'; transfer $tool $src $out $kind"
  printf '%s\t%s\t%s\n' "$scen" "$tool" "$(cat "$W/t")" >> "$W/times.tsv"
}

SCENARIOS=(big small-fresh small-noop medium)
if [ "$LARGE_N" -gt 0 ]; then SCENARIOS+=(large-fresh large-noop); fi
for scen in "${SCENARIOS[@]}"; do
  want "$scen" || continue
  tools=("${TOOLS[@]}")
  case $scen in
    big) src=$W/data/big kind=file fresh=1 ;;
    small-fresh) src=$W/data/small kind=tree fresh=1 ;;
    small-noop) src=$W/data/small kind=tree fresh=0 ;;
    medium) src=$W/data/medium kind=tree fresh=1 ;;
    # OpenSSH sftp is no sync tool: it would copy the whole tree again.
    large-fresh) src=$W/data/large kind=tree fresh=1 tools=(sftp-mirror rclone lftp) ;;
    large-noop) src=$W/data/large kind=tree fresh=0 tools=(sftp-mirror rclone lftp) ;;
  esac
  runs=$RUNS
  case $scen in large-*) runs=${BENCH_LARGE_RUNS:-1} ;; esac
  if [ "$fresh" = 0 ]; then
    for t in "${tools[@]}"; do
      # The large tree's fresh copy is the no-op pass's first copy.
      if [ "$scen" = large-noop ] && [ -d "$W/out/$t-large-fresh-1" ]; then mv "$W/out/$t-large-fresh-1" "$W/out/$t-$scen"; continue; fi
      say "$scen: first copy by $t"; transfer "$t" "$src" "$W/out/$t-$scen" "$kind"
    done
  fi
  for r in $(seq "$runs"); do
    for t in "${tools[@]}"; do
      say "$scen run $r: $t"
      out="$W/out/$t-$scen"
      if [ "$fresh" = 1 ]; then out="$out-$r"; fi
      measure "$scen" "$t" "$src" "$kind" "$out"
      # Every tool must have produced the same bytes.
      diff -r -q -x .sftp-mirror "$src" "$out" >/dev/null || say "WARNING: $t's copy of $scen differs from the source"
      if [ "$kind" = file ]; then rm -rf "$out"; fi # one inode: no allocator penalty, and it frees 1 GiB
    done
  done
done

say "capped server: rclone serve sftp (Go pkg/sftp, 32 KiB READ replies) over the same data"
mkdir -p "$W/data/capped"
CAP_MB=$(( BIG_MB > 64 ? 64 : BIG_MB ))
head -c $((CAP_MB << 20)) "$W/data/big/big.bin" > "$W/data/capped/big.bin"
RPORT=$(free_port)
rclone serve sftp "$W/data" --addr "127.0.0.1:$RPORT" --key "$W/host_key" --authorized-keys "$W/authorized_keys" \
  --dir-cache-time 0s --config /dev/null >"$W/rclone-serve.log" 2>&1 &
RPID=$!
trap 'kill $(cat "$W/sshd.pid" 2>/dev/null) 2>/dev/null || true; kill $RPID 2>/dev/null || true; [ -n "${DPID:-}" ] && kill $DPID 2>/dev/null || true; [ -n "${HPID:-}" ] && kill $HPID 2>/dev/null || true' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$RPORT) 2>/dev/null && break; sleep 0.1; done
echo "[127.0.0.1]:$RPORT $(cut -d' ' -f1,2 "$W/host_key.pub")" >> "$W/known_hosts"
capped() { # tool dir out
  case "$1" in
    sftp-mirror) sed "s/^port = .*/port = $RPORT/" "$(config "/$2" "$3")" > "$W/cfg-capped.toml"
                 "$BIN" --config "$W/cfg-capped.toml" -q reconcile --json >/dev/null ;;
    openssh-sftp) mkdir -p "$3"; echo "get /$2/big.bin $3/big.bin" > "$W/batch-capped"
                  sftp -q $SSHOPTS -P "$RPORT" -b "$W/batch-capped" root@127.0.0.1 >/dev/null ;;
  esac
}
for scen in capped-64 capped-big; do
  want "$scen" || continue
  dir=$([ $scen = capped-64 ] && echo capped || echo big)
  for r in $(seq "$RUNS"); do
    for t in sftp-mirror openssh-sftp; do
      say "$scen run $r: $t"
      out="$W/out/$t-$scen-$r"
      /usr/bin/time -f "%e %U %S %M" -o "$W/t" bash -c "$(declare -f capped config bench_config); BIN=$BIN W=$W PORT=$PORT RPORT=$RPORT SSHOPTS='$SSHOPTS'; capped $t $dir $out"
      printf '%s\t%s\t%s\n' "$scen" "$t" "$(cat "$W/t")" >> "$W/times.tsv"
      cmp -s "$W/data/$dir/big.bin" "$out/big.bin" || say "WARNING: $t's copy of $scen differs from the source"
      rm -rf "$out"
    done
  done
done
kill $RPID 2>/dev/null || true

say "event-to-disk latency on an idle daemon, then intake (every event fsync-journaled before its 204)"
IPORT=$(free_port)
mkdir -p "$W/intake-remote/bench"
"$BIN" --config "$(config "$W/intake-remote" "$W/intake-mirror" "127.0.0.1:$IPORT")" -q serve 2>"$W/serve.log" &
DPID=$!
for _ in $(seq 100); do grep -q "listening" "$W/serve.log" 2>/dev/null && break; curl -s -o /dev/null "http://127.0.0.1:$IPORT/" && break; sleep 0.1; done
"$LOADGEN" latency "http://127.0.0.1:$IPORT/webhook" "bench secret" "$W/intake-remote" "$W/intake-mirror" "$LAT_N" > "$W/latency.json"
"$LOADGEN" intake "http://127.0.0.1:$IPORT/webhook" "bench secret" "$INTAKE_SECS" 32 > "$W/intake-ours.json"
OURS_RSS=$(awk '/VmHWM/ {print $2}' /proc/$DPID/status)
kill $DPID; wait $DPID 2>/dev/null || true; DPID=

if want burst; then
  say "burst: a file.created for each of the $SMALL_N small files at once (16 connections), until all are in the mirror"
  for r in $(seq "$RUNS"); do
    # A fresh reconcile of the same files right before each burst: the pair
    # sees the same machine state (the ratio is taken from these pairs).
    /usr/bin/time -f "%e" -o "$W/t" "$BIN" --config "$(config "$W/data/small" "$W/out/burst-rec-$r")" -q reconcile --json >/dev/null
    cat "$W/t" > "$W/burst-rec-$r.txt"
    BPORT=$(free_port)
    sed "s|^path = \"$W/journal.db\"|path = \"$W/journal-burst-$r.db\"|" \
      "$(config "$W/data/small" "$W/out/burst-$r" "127.0.0.1:$BPORT")" > "$W/cfg-burst.toml"
    "$BIN" --config "$W/cfg-burst.toml" -q serve 2>"$W/burst-serve.log" &
    DPID=$!
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$BPORT/" && break; sleep 0.1; done
    "$LOADGEN" burst "http://127.0.0.1:$BPORT/webhook" "bench secret" "$W/data/small" "$W/out/burst-$r" 16 > "$W/burst-$r.json"
    kill $DPID; wait $DPID 2>/dev/null || true; DPID=
    diff -r -q -x .sftp-mirror "$W/data/small" "$W/out/burst-$r" >/dev/null || say "WARNING: the burst's mirror differs from the source"
    # Kept until the end, like every fresh copy: the next run's 10,000 new
    # inodes would otherwise each skip this run's freshly deleted ones.
  done
fi

say "intake peer: adnanh/webhook with an HMAC-SHA256 rule, with no command and with /bin/true"
for peer in none true; do
  HPORT=$(free_port)
  cmd=$([ $peer = none ] && echo "" || echo /bin/true)
  cat > "$W/hooks.json" <<EOF
[{"id": "webhook", "execute-command": "$cmd", "success-http-response-code": 204,
  "trigger-rule": {"match": {"type": "payload-hmac-sha256", "secret": "bench secret",
                             "parameter": {"source": "header", "name": "X-Hub-Signature"}}}}]
EOF
  webhook -hooks "$W/hooks.json" -ip 127.0.0.1 -port "$HPORT" -urlprefix "" >"$W/webhook.log" 2>&1 &
  HPID=$!
  sleep 1
  "$LOADGEN" intake "http://127.0.0.1:$HPORT/webhook" "bench secret" "$INTAKE_SECS" 32 > "$W/intake-peer-$peer.json"
  awk '/VmHWM/ {print $2}' /proc/$HPID/status > "$W/intake-peer-$peer.rss"
  kill $HPID; HPID=
done

say "writing $OUT"
python3 - "$W" "$OUT" "$SCALE" "$RUNS" "$OURS_RSS" "$ROOT" <<'EOF'
import json, os, statistics, subprocess, sys, datetime, platform
w, out, scale, runs, ours_rss, root = sys.argv[1:7]
rows = {}
for line in open(f"{w}/times.tsv"):
    scen, tool, t = line.rstrip("\n").split("\t")
    e, u, s, m = t.split()
    rows.setdefault(scen, {}).setdefault(tool, []).append((float(e), float(u) + float(s), int(m)))
def ver(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip().splitlines()[0]
    except Exception:
        return "?"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
lines = [f"# sftp-mirror benchmark ({scale})", "",
         f"- date: {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC; machine: {platform.node()}, {len([l for l in open('/proc/cpuinfo') if l.startswith('processor')])} cores, {cpu}",
         f"- sftp-mirror {ver(f'git -C {root} rev-parse --short HEAD')}; {ver('ssh -V 2>&1')}; {ver('rclone version')}; {ver('lftp --version')}; {ver('webhook -version')}",
         f"- {runs} run(s) per tool, tools alternating; server and clients share the machine; private sshd (internal-sftp) on loopback",
         "- command: `" + (f"BENCH_LARGE={os.environ['BENCH_LARGE']} " if os.environ.get("BENCH_LARGE") else "") + "bash bench/run.sh`" + (" (BENCH_SCALE=smoke)" if scale == "smoke" else ""), "",
         "| scenario | tool | wall s, median (min-max) | CPU s | peak RSS MiB | speed vs best peer |",
         "|---|---|---|---|---|---|"]
names = {"capped-64": "64 MiB file from rclone serve sftp (32 KiB replies)", "capped-big": "big file from rclone serve sftp (32 KiB replies)", "big": "1 file", "small-fresh": "small files, fresh", "small-noop": "small files, nothing changed", "medium": "1 MiB files, fresh", "large-fresh": f"{os.environ.get('BENCH_LARGE', '?')} files of 1-100 B, fresh", "large-noop": f"{os.environ.get('BENCH_LARGE', '?')} files, nothing changed"}
for scen in ["big", "small-fresh", "small-noop", "medium", "large-fresh", "large-noop", "capped-64", "capped-big"]:
    tools = rows.get(scen, {})
    med = {t: statistics.median(x[0] for x in v) for t, v in tools.items()}
    peers = {t: m for t, m in med.items() if t != "sftp-mirror"}
    best = min(peers.values()) if peers else None
    for t, v in tools.items():
        walls = [x[0] for x in v]
        ratio = f"{best / med[t]:.2f}x" if (t == "sftp-mirror" and best) else ""
        lines.append(f"| {names[scen]} | {t} | {med[t]:.2f} ({min(walls):.2f}-{max(walls):.2f}) | {statistics.median(x[1] for x in v):.2f} | {max(x[2] for x in v) / 1024:.0f} | {ratio} |")
ours = json.load(open(f"{w}/intake-ours.json")); lat = json.load(open(f"{w}/latency.json"))
peers = {p: (json.load(open(f"{w}/intake-peer-{p}.json")), int(open(f"{w}/intake-peer-{p}.rss").read().strip() or 0)) for p in ["none", "true"]}
none = peers["none"][0]
lines += ["", "| intake (32 connections, signed events) | requests/s | p50 ms | p99 ms | non-204 | peak RSS MiB | vs no-command receiver |", "|---|---|---|---|---|---|---|",
          f"| sftp-mirror serve (each event fsync-journaled before 204) | {ours['rps']} | {ours['p50_ms']} | {ours['p99_ms']} | {ours['non_204']} | {int(ours_rss) / 1024:.0f} | {ours['rps'] / max(none['rps'], 1):.2f}x |",
          f"| adnanh/webhook (HMAC rule, no command, no journal) | {none['rps']} | {none['p50_ms']} | {none['p99_ms']} | {none['non_204']} | {peers['none'][1] / 1024:.0f} | |",
          f"| adnanh/webhook (HMAC rule, runs /bin/true, no journal) | {peers['true'][0]['rps']} | {peers['true'][0]['p50_ms']} | {peers['true'][0]['p99_ms']} | {peers['true'][0]['non_204']} | {peers['true'][1] / 1024:.0f} | |",
          "", f"Event-to-disk latency (signed `file.created` for a 1 KiB file until it is in the mirror, {lat['events']} events in sequence): p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms."]
import glob
bursts = [json.load(open(f)) for f in sorted(glob.glob(f"{w}/burst-*.json"))]
fresh = [float(open(f).read().split()[-1]) for f in sorted(glob.glob(f"{w}/burst-rec-*.txt"))]
if bursts:
    secs = [b["seconds"] for b in bursts]
    b = statistics.median(secs)
    ratio = f"{statistics.median(fresh) / b:.2f}x (a fresh reconcile of the same files right before each burst: {statistics.median(fresh):.2f} s median, {min(fresh):.2f}-{max(fresh):.2f})" if fresh else "(no reconcile run to compare)"
    lines += ["", f"Burst: {bursts[0]['events']} `file.created` for new small files, sent at once from 16 connections, until all are in the mirror: "
              f"{b:.2f} s median ({min(secs):.2f}-{max(secs):.2f}), {bursts[0]['events'] / b:.0f} events applied/s; vs reconcile {ratio}. "
              f"Event to disk during the burst (sent until its file's rename, the queue behind it included): p50 {statistics.median(x['p50_ms'] for x in bursts):.0f} ms, "
              f"p99 {statistics.median(x['p99_ms'] for x in bursts):.0f} ms (medians of the runs); sending the events took {statistics.median(x['sent_seconds'] for x in bursts):.2f} s."]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
# Deleted last, so that nothing measured above creates files next to 100,000 freshly deleted inodes.
rm -rf "$W/out" "$W/data"
