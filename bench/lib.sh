# Shared by bench/run.sh and bench/ab.sh (sourced).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_sshd W: a private OpenSSH sshd (internal-sftp) on a free loopback port,
# with its own host and client keys in W. Sets PORT; writes W/known_hosts and
# W/sshd.pid (the caller's trap stops it).
start_sshd() {
  local w=$1
  PORT=$(free_port)
  ssh-keygen -q -t ed25519 -N '' -f "$w/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$w/client_key"
  cp "$w/client_key.pub" "$w/authorized_keys"
  mkdir -p /run/sshd
  cat > "$w/sshd_config" <<EOT
ListenAddress 127.0.0.1
Port $PORT
HostKey $w/host_key
PidFile $w/sshd.pid
AuthorizedKeysFile $w/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin yes
Subsystem sftp internal-sftp
MaxStartups 100
MaxSessions 100
EOT
  /usr/sbin/sshd -f "$w/sshd_config" -E "$w/sshd.log"
  sleep 0.5
  echo "[127.0.0.1]:$PORT $(cut -d' ' -f1,2 "$w/host_key.pub")" > "$w/known_hosts"
}

# bench_config W REMOTE_ROOT MIRROR LISTEN JOURNAL SECRET: writes the
# sftp-mirror config every benchmark runs with (to W/cfg.toml) and prints its path.
bench_config() {
  cat > "$1/cfg.toml" <<EOT
[sftp]
host = "127.0.0.1"
port = $PORT
username = "root"
private_key = "$1/client_key"
known_hosts = "$1/known_hosts"
remote_root = "$2"
connections = 2
[mirror]
path = "$3"
max_delete_ratio = 1.0
concurrency = 16
[webhook]
listen = "$4"
secret = "$6"
[admin]
listen = "off"
[journal]
path = "$5"
[reconcile]
on_start = false
interval = "0s"
EOT
  echo "$1/cfg.toml"
}
