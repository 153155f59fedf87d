#!/usr/bin/env bash
# The test command (README "Quick start"): installs what the tests need on a
# fresh Debian machine, then runs format, lint and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v sftp >/dev/null 2>&1 || need+=(openssh-client)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl ca-certificates)
# The other SFTP servers of the interop suite (tests/interop_servers.rs).
[ -x /usr/sbin/proftpd ] || need+=(proftpd-core)
[ -f /usr/lib/proftpd/mod_sftp.so ] || need+=(proftpd-mod-crypto)
command -v rclone >/dev/null 2>&1 || need+=(rclone)
/usr/bin/python3 -c 'import asyncssh' >/dev/null 2>&1 || need+=(python3-asyncssh)
# script(1) runs the binary on a pseudo-terminal (the progress bar test).
command -v script >/dev/null 2>&1 || need+=(bsdutils)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: the tests need ${need[*]}; run as root or: sudo apt-get install -y ${need[*]}" >&2
    exit 2
  fi
  echo "installing ${need[*]} …"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# The daemon builds without the embedded test server (the `testkit` feature).
cargo clippy --no-default-features --locked -- -D warnings
cargo test --locked -- --test-threads "${TEST_THREADS:-4}"
