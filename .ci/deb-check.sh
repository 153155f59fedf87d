#!/usr/bin/env bash
# Builds the Debian package with cargo-deb and checks it for real: its contents
# and control data, the conffile, the maintainer scripts (install, reinstall,
# remove, purge, install again), the installed binary, and the systemd units
# (systemd-analyze verify). Runs as root on a fresh Debian machine (CI); needs no
# running systemd. Leaves the package installed (not enabled) at the end.
#
#   SFTP_MIRROR_ROOT=DIR  the repository (default: this script's parent folder)
#   SFTP_MIRROR_DEB=FILE  check this .deb instead of building one
#   CARGO_TARGET_DIR      honoured by cargo deb as by cargo
#
# An already installed sftp-mirror is purged first only if it looks untouched
# (configuration unmodified, no unit enabled); otherwise the script refuses.
set -euo pipefail

PKG=sftp-mirror
UNITS=(sftp-mirror.service sftp-mirror@.service sftp-mirror-reconcile.service sftp-mirror-reconcile.timer)
UNITDIR=/lib/systemd/system
CONF=/etc/sftp-mirror/config.toml

n=0
step() { n=$((n + 1)); printf '\n==> [%d] %s\n' "$n" "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
die() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }
trap 'rc=$?; [ $rc -eq 0 ] || printf "\ndeb-check: FAILED (exit %d) in step %d; outputs kept in %s\n" "$rc" "$n" "${WORK:-?}" >&2' EXIT

# "owner:group mode" of a path, e.g. "root:sftp-mirror 640".
perms() { stat -c '%U:%G %a' "$1"; }
expect_perms() { # path "owner:group mode"
    [ -e "$1" ] || die "$1 is missing"
    local got; got=$(perms "$1")
    [ "$got" = "$2" ] || die "$1 is '$got', expected '$2'"
    ok "$1 $2"
}
enabled_links() { find /etc/systemd/system -name 'sftp-mirror*' -type l 2>/dev/null || true; }

ROOT=${SFTP_MIRROR_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$ROOT"
WORK=$(mktemp -d /tmp/deb-check.XXXXXX)

step "environment (repository $ROOT)"
[ "$(id -u)" -eq 0 ] || die "run as root: the check installs and purges the package"
[ -f Cargo.toml ] || die "$ROOT has no Cargo.toml (set SFTP_MIRROR_ROOT)"
grep -q '^\[package.metadata.deb\]' Cargo.toml || die "Cargo.toml has no [package.metadata.deb]"
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
[ -n "$VERSION" ] || die "cannot read the version from Cargo.toml"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (not a Debian system?)"
if ! command -v systemd-analyze >/dev/null; then
    echo "    systemd-analyze missing: apt-get install -y systemd"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
ok "Debian $(cat /etc/debian_version), $(systemctl --version | head -n1), crate version $VERSION"

if [ -n "${SFTP_MIRROR_DEB:-}" ]; then
    step "using the given package $SFTP_MIRROR_DEB"
    DEB=$SFTP_MIRROR_DEB
else
    step "build the package (cargo deb)"
    command -v cargo >/dev/null || die "cargo not found (install the Rust toolchain)"
    if ! cargo deb --version >/dev/null 2>&1; then
        echo "    cargo-deb missing: cargo install cargo-deb --locked"
        cargo install cargo-deb --locked
    fi
    start=$SECONDS
    cargo deb | tee "$WORK/cargo-deb.out"
    DEB=$(grep '\.deb$' "$WORK/cargo-deb.out" | tail -n1)
    ok "built in $((SECONDS - start)) s"
fi
[ -f "$DEB" ] || die "no package at '$DEB'"
ok "$DEB ($(du -h "$DEB" | cut -f1))"

step "control data (dpkg-deb -I)"
dpkg-deb -I "$DEB" | tee "$WORK/info"
field() { dpkg-deb -f "$DEB" "$1"; }
[ "$(field Package)" = "$PKG" ] || die "Package is '$(field Package)'"
case "$(field Version)" in "$VERSION" | "$VERSION"-*) ok "Version $(field Version)" ;; *) die "Version $(field Version) does not match $VERSION" ;; esac
[ "$(field Section)" = net ] || die "Section is '$(field Section)', expected net"
[ "$(field Priority)" = optional ] || die "Priority is '$(field Priority)', expected optional"
field Depends | grep -q 'libc6' || die "Depends ($(field Depends)) lacks libc6: \$auto did not work"
[ -n "$(field Maintainer)" ] || die "no Maintainer"
ok "Package, Section net, Priority optional, Depends: $(field Depends)"
for s in postinst prerm postrm; do
    grep -Eq "^ +[0-9]+ bytes, +[0-9]+ lines +\* +$s " "$WORK/info" || die "maintainer script $s missing or not executable"
done
ok "maintainer scripts postinst, prerm, postrm (executable)"

step "file list (dpkg-deb -c)"
dpkg-deb -c "$DEB" | tee "$WORK/contents"
# path mode: every file we ship, with its permissions
expect_files=(
    "./usr/bin/sftp-mirror -rwxr-xr-x"
    "./lib/systemd/system/sftp-mirror.service -rw-r--r--"
    "./lib/systemd/system/sftp-mirror@.service -rw-r--r--"
    "./lib/systemd/system/sftp-mirror-reconcile.service -rw-r--r--"
    "./lib/systemd/system/sftp-mirror-reconcile.timer -rw-r--r--"
    "./usr/lib/sysusers.d/sftp-mirror.conf -rw-r--r--"
    "./usr/lib/tmpfiles.d/sftp-mirror.conf -rw-r--r--"
    "./etc/sftp-mirror/config.toml -rw-r-----"
    "./usr/share/doc/sftp-mirror/README.md -rw-r--r--"
    "./usr/share/doc/sftp-mirror/README.Debian -rw-r--r--"
    "./usr/share/doc/sftp-mirror/copyright -rw-r--r--"
    "./usr/share/doc/sftp-mirror/examples/Caddyfile -rw-r--r--"
    "./usr/share/doc/sftp-mirror/examples/nginx.conf -rw-r--r--"
    "./usr/share/doc/sftp-mirror/examples/config.toml -rw-r--r--"
)
for e in "${expect_files[@]}"; do
    path=${e% *} mode=${e##* }
    line=$(awk -v p="$path" '$6 == p' "$WORK/contents")
    [ -n "$line" ] || die "$path is not in the package"
    set -- $line
    [ "$1" = "$mode" ] || die "$path has mode $1, expected $mode"
    case "$2" in root/root | 0/0) ;; *) die "$path is owned by $2, expected root" ;; esac
done
ok "${#expect_files[@]} expected files present with the right modes, owned by root"
if awk '$2 != "root/root" && $2 != "0/0"' "$WORK/contents" | grep -q .; then die "files not owned by root in the package"; fi

step "maintainer scripts and conffiles (dpkg-deb -e)"
dpkg-deb -e "$DEB" "$WORK/control"
echo "    conffiles:"; sed 's/^/      /' "$WORK/control/conffiles"
[ "$(grep -cx "$CONF" "$WORK/control/conffiles")" -eq 1 ] || die "$CONF is not listed exactly once in conffiles"
ok "$CONF is a conffile"
for s in postinst prerm postrm; do
    sh -n "$WORK/control/$s" || die "$s: shell syntax error"
    grep -qx 'set -e' "$WORK/control/$s" || die "$s does not 'set -e'"
done
ok "postinst, prerm, postrm parse with sh -n and use set -e"
# The payload's binary (debug info moved to /usr/lib/debug when configured).
dpkg-deb -x "$DEB" "$WORK/root"
"$WORK/root/usr/bin/sftp-mirror" --version >/dev/null || die "the packaged binary does not run"
ok "packaged binary runs ($(du -h "$WORK/root/usr/bin/sftp-mirror" | cut -f1))"

step "start from a clean state"
if dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null | grep -q 'installed\|config-files'; then
    want=$(dpkg-query -W -f='${Conffiles}' "$PKG" | awk -v c="$CONF" '$1 == c {print $2}')
    if [ -f "$CONF" ] && [ "$(md5sum <"$CONF" | cut -d' ' -f1)" != "$want" ]; then
        die "$PKG is installed with a modified $CONF: not purging it (remove it yourself)"
    fi
    if enabled_links | grep -q .; then die "$PKG is installed with enabled units: not purging it"; fi
    dpkg -P "$PKG"
    ok "purged an untouched earlier installation"
else
    ok "$PKG not installed"
fi

check_installed() {
    [ -x /usr/bin/sftp-mirror ] || die "/usr/bin/sftp-mirror missing after install"
    local pw; pw=$(getent passwd "$PKG") || die "user $PKG was not created"
    IFS=: read -r _ _ uid _ _ home shell <<<"$pw"
    [ "$uid" -lt 1000 ] || die "user $PKG has uid $uid: not a system user"
    [ "$home" = /var/lib/sftp-mirror ] || die "user $PKG has home $home"
    [ "$shell" = /usr/sbin/nologin ] || die "user $PKG has shell $shell"
    getent group "$PKG" >/dev/null || die "group $PKG was not created"
    ok "system user $PKG (uid $uid, home $home, shell $shell) and group"
    expect_perms /srv/sftp-mirror "sftp-mirror:sftp-mirror 750"
    expect_perms /var/lib/sftp-mirror "sftp-mirror:sftp-mirror 750"
    expect_perms /etc/sftp-mirror "root:sftp-mirror 750"
    expect_perms "$CONF" "root:sftp-mirror 640"
    dpkg-query -W -f='${Conffiles}\n' "$PKG" | grep -q "^ $CONF " || die "dpkg does not record $CONF as a conffile"
    ok "dpkg records $CONF as a conffile"
    if enabled_links | grep -q .; then die "units were enabled by the package: $(enabled_links)"; fi
    ok "no unit enabled"
}

step "install (dpkg -i)"
dpkg -i "$DEB" 2>&1 | tee "$WORK/install.out"
grep -q "systemctl enable --now sftp-mirror" "$WORK/install.out" || die "postinst printed no hint on a first install"
check_installed
for u in "${UNITS[@]}"; do [ -f "$UNITDIR/$u" ] || die "$UNITDIR/$u missing"; done
ok "units installed in $UNITDIR"

step "installed binary"
got=$(/usr/bin/sftp-mirror --version)
echo "    $got"
[ "$got" = "sftp-mirror $VERSION" ] || die "--version printed '$got', expected 'sftp-mirror $VERSION'"
ok "/usr/bin/sftp-mirror --version"
# As the service user, with the installed (unedited) configuration: it must be
# readable (a config error, exit 2, naming the missing password file), not "permission denied".
set +e
out=$(runuser -u "$PKG" -- /usr/bin/sftp-mirror --config "$CONF" reconcile --dry-run 2>&1)
rc=$?
set -e
echo "$out" | sed 's/^/    | /'
[ $rc -eq 2 ] || die "reconcile with the example config exited $rc, expected 2 (configuration error)"
if echo "$out" | grep -qi 'permission denied'; then die "the service user cannot read $CONF"; fi
echo "$out" | grep -q 'password' || die "the configuration error does not name the missing password file"
ok "the service user reads $CONF; the unedited example is refused with exit 2"

step "systemd units (systemd-analyze verify)"
# verify loads each unit as the system manager would (syntax, unknown keys,
# specifiers, the ExecStart binary), without needing systemd as PID 1. The
# template is checked through an instance. Any message about our units fails.
set +e
SYSTEMD_LOG_LEVEL=info SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no \
    "$UNITDIR/sftp-mirror.service" "$UNITDIR/sftp-mirror@check.service" \
    "$UNITDIR/sftp-mirror-reconcile.service" "$UNITDIR/sftp-mirror-reconcile.timer" >"$WORK/verify" 2>&1
rc=$?
set -e
sed 's/^/    | /' "$WORK/verify"
[ $rc -eq 0 ] || die "systemd-analyze verify exited $rc"
if grep -i 'sftp-mirror' "$WORK/verify" | grep -q .; then die "systemd-analyze verify reported problems in our units (above)"; fi
ok "systemd-analyze verify: no findings for ${UNITS[*]}"
systemd-analyze calendar daily >/dev/null || die "OnCalendar=daily does not parse"
for u in sftp-mirror.service sftp-mirror-reconcile.service; do
    score=$(systemd-analyze security --offline=true --no-pager "$UNITDIR/$u" 2>/dev/null | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
    [ -n "$score" ] || die "systemd-analyze security could not rate $u"
    awk -v s="$score" 'BEGIN { exit !(s <= 2.5) }' || die "$u exposure $score is above 2.5: hardening lost?"
    ok "$u exposure level $score (systemd-analyze security, at most 2.5 accepted)"
done

step "reinstall over itself (postinst configure with a previous version), conffile kept"
echo "# edited by deb-check" >>"$CONF"
systemctl enable sftp-mirror.service sftp-mirror@check.service sftp-mirror-reconcile.timer 2>&1 | sed 's/^/    | /'
[ "$(enabled_links | wc -l)" -ge 3 ] || die "systemctl enable (offline) created no links"
dpkg -i "$DEB" 2>&1 | tee "$WORK/reinstall.out"
tail -n1 "$CONF" | grep -q 'edited by deb-check' || die "reinstall replaced the edited $CONF"
if grep -q "systemctl enable --now" "$WORK/reinstall.out"; then die "postinst printed the first-install hint on an upgrade"; fi
expect_perms "$CONF" "root:sftp-mirror 640"
[ "$(enabled_links | wc -l)" -ge 3 ] || die "an upgrade must not disable units"
ok "edited conffile and enabled units survive a reinstall"

step "remove (dpkg -r): units stopped and disabled, configuration and user kept"
dpkg -r "$PKG" 2>&1 | tee "$WORK/remove.out"
[ ! -e /usr/bin/sftp-mirror ] || die "/usr/bin/sftp-mirror still there after remove"
[ ! -e "$UNITDIR/sftp-mirror.service" ] || die "unit still there after remove"
if enabled_links | grep -q .; then die "links left after remove: $(enabled_links)"; fi
ok "binary and units gone, no enablement links left"
[ -f "$CONF" ] || die "remove deleted the conffile"
getent passwd "$PKG" >/dev/null || die "remove deleted the user"
ok "configuration and user kept"

step "purge (dpkg -P): configuration, journal folder and user gone"
mkdir -p /var/lib/sftp-mirror && touch /var/lib/sftp-mirror/journal.db
dpkg -P "$PKG" 2>&1 | tee "$WORK/purge.out"
[ ! -e "$CONF" ] || die "$CONF still there after purge"
[ ! -e /etc/sftp-mirror ] || die "/etc/sftp-mirror still there after purge (nothing else was put in it)"
if grep -q 'kept' "$WORK/purge.out"; then die "purge claims to have kept something"; fi
[ ! -e /var/lib/sftp-mirror ] || die "/var/lib/sftp-mirror still there after purge"
[ ! -e /srv/sftp-mirror ] || die "the empty mirror /srv/sftp-mirror is still there after purge"
if getent passwd "$PKG" >/dev/null; then die "user still there after purge"; fi
if getent group "$PKG" >/dev/null; then die "group still there after purge"; fi
if dpkg-statoverride --list | grep -q sftp-mirror; then die "statoverrides left after purge"; fi
ok "nothing left"

step "install again after purge"
dpkg -i "$DEB" >/dev/null
check_installed

step "purge with an admin's files and a filled mirror: kept, re-owned to root, user gone"
# A freed system uid/gid is handed to the next system user: what purge keeps
# must not stay owned by it (that user would inherit the secrets).
old_uid=$(id -u "$PKG"); old_gid=$(getent group "$PKG" | cut -d: -f3)
install -o root -g "$PKG" -m 0640 /dev/null /etc/sftp-mirror/password
install -d -o "$PKG" -g "$PKG" -m 0750 /srv/sftp-mirror/incoming
install -o "$PKG" -g "$PKG" -m 0640 /dev/null /srv/sftp-mirror/incoming/report.csv
dpkg -P "$PKG" 2>&1 | tee "$WORK/purge2.out"
grep -q 'kept the mirror /srv/sftp-mirror' "$WORK/purge2.out" || die "purge did not say it kept the mirror"
grep -q 'kept your own files in /etc/sftp-mirror' "$WORK/purge2.out" || die "purge did not say it kept /etc/sftp-mirror"
[ -f /srv/sftp-mirror/incoming/report.csv ] || die "purge deleted a mirrored file"
[ -f /etc/sftp-mirror/password ] || die "purge deleted the admin's secret file"
if getent passwd "$PKG" >/dev/null; then die "user still there after purge"; fi
if getent group "$PKG" >/dev/null; then die "group still there after purge"; fi
left=$(find /srv/sftp-mirror /etc/sftp-mirror \( -uid "$old_uid" -o -gid "$old_gid" \) -print)
[ -z "$left" ] || die "still owned by the freed id $old_uid:$old_gid after purge: $left"
expect_perms /etc/sftp-mirror "root:root 750"
expect_perms /etc/sftp-mirror/password "root:root 640"
expect_perms /srv/sftp-mirror/incoming/report.csv "root:root 640"
ok "kept files belong to root, nothing to the freed id $old_uid:$old_gid"
rm -rf /srv/sftp-mirror /etc/sftp-mirror

step "install again"
dpkg -i "$DEB" >/dev/null
check_installed

trap - EXIT
rm -rf "$WORK"
printf '\ndeb-check: OK (%s, %s)\n' "$(basename "$DEB")" "$(field Version)"
