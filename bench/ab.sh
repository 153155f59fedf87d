#!/usr/bin/env bash
# A/B: two sftp-mirror binaries on the same data and private sshd, runs
# alternating, each into a fresh ext4 file system (a loop device made new for
# every run), so no run inherits another's deleted inodes or dirty pages.
#
#   bash bench/ab.sh OLD_BIN NEW_BIN            # reconcile and burst, 3 runs each
#   AB_RUNS=5 AB_ONLY=reconcile bash bench/ab.sh OLD NEW
#   AB_N=2000 bash bench/ab.sh OLD NEW          # fewer files (default 10,000 of 1-8 KiB)
#
# Build the old binary from a commit with e.g.
#   git stash && cargo build --release && cp target/release/sftp-mirror /tmp/old && git stash pop
# Needs root (mount), loopback only. Prints one line per run and the medians.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: bash bench/ab.sh OLD_BIN NEW_BIN" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
A=$(realpath "$1") B=$(realpath "$2")
RUNS=${AB_RUNS:-3} N=${AB_N:-10000} ONLY=${AB_ONLY:-"reconcile burst"}
W=$(mktemp -d /tmp/sftp-mirror-ab.XXXXXX)
say() { printf '==> %s\n' "$*" >&2; }
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

(cd "$ROOT" && cargo build --release --locked --example loadgen 2>&1 | tail -1 >&2)
LOADGEN="$ROOT/target/release/examples/loadgen"

mkdir -p "$W/mnt"
cleanup() {
  [ -n "${DPID:-}" ] && kill "$DPID" 2>/dev/null
  mountpoint -q "$W/mnt" && umount "$W/mnt"
  kill "$(cat "$W/sshd.pid" 2>/dev/null)" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT
start_sshd "$W"

say "data: $N files of 1-8 KiB in folders of 100"
python3 - "$W/data" "$N" <<'EOF'
import os, random, sys
base, n = sys.argv[1], int(sys.argv[2])
r = random.Random(20261128)
for i in range(n):
    d = f"{base}/d{i // 100:03}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i % 100:03}.bin", "wb") as f:
        f.write(r.randbytes(r.randint(1024, 8192)))
EOF

config() { # mirror listen
  bench_config "$W" "$W/data" "$1" "$2" "$W/mnt/journal.db" "ab secret"
}

fresh_fs() {
  mountpoint -q "$W/mnt" && umount "$W/mnt"
  rm -f "$W/fs.img"
  truncate -s 4G "$W/fs.img"
  mkfs.ext4 -q -F "$W/fs.img"
  mount -o loop "$W/fs.img" "$W/mnt"
}

run() { # scenario bin -> seconds
  local scen=$1 bin=$2
  fresh_fs
  case $scen in
    reconcile)
      /usr/bin/time -f "%e" -o "$W/t" "$bin" --config "$(config "$W/mnt/m" 127.0.0.1:0)" -q reconcile >/dev/null
      cat "$W/t" ;;
    burst)
      local bport; bport=$(free_port)
      "$bin" --config "$(config "$W/mnt/m" "127.0.0.1:$bport")" -q serve 2>"$W/serve.log" &
      DPID=$!
      for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$bport/" && break; sleep 0.1; done
      "$LOADGEN" burst "http://127.0.0.1:$bport/webhook" "ab secret" "$W/data" "$W/mnt/m" 16 > "$W/burst.json"
      kill "$DPID"; wait "$DPID" 2>/dev/null || true; DPID=
      python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["seconds"])' "$W/burst.json" ;;
  esac
  diff -r -q -x .sftp-mirror "$W/data" "$W/mnt/m" >/dev/null || say "WARNING: $bin's $scen mirror differs from the source"
}

: > "$W/times.tsv"
for scen in $ONLY; do
  for r in $(seq "$RUNS"); do
    for side in A B; do
      bin=$([ $side = A ] && echo "$A" || echo "$B")
      t=$(run "$scen" "$bin")
      printf '%s\t%s\t%s\n' "$scen" "$side" "$t" | tee -a "$W/times.tsv" >&2
    done
  done
done
python3 - "$W/times.tsv" "$A" "$B" <<'EOF'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
for scen in dict.fromkeys(r[0] for r in rows):
    a = [float(r[2]) for r in rows if r[0] == scen and r[1] == "A"]
    b = [float(r[2]) for r in rows if r[0] == scen and r[1] == "B"]
    print(f"{scen}: A {statistics.median(a):.2f} s ({' '.join(map(str, a))}), "
          f"B {statistics.median(b):.2f} s ({' '.join(map(str, b))}): B is {statistics.median(a) / statistics.median(b):.2f}x A")
EOF
