#!/usr/bin/env bash
# Supply-chain checks with the policy in deny.toml (licenses, banned crates,
# sources). Advisories need the RustSec database from GitHub, which CI machines
# here cannot reach; run `cargo deny check advisories` where it can be fetched.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deny >/dev/null 2>&1 || cargo install cargo-deny --locked --quiet
cargo deny check bans licenses sources
