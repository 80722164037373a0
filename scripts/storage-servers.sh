#!/usr/bin/env bash
# Throwaway storage servers for the intake's remote backends: a PostgreSQL cluster and an S3 server
# (s3s-fs), both on free loopback ports, in a fresh temporary directory.
#
#   eval "$(scripts/storage-servers.sh start)"   # prints `export NAME=value` lines
#   scripts/storage-servers.sh stop              # uses $DATADONOR_STORAGE_DIR (or its argument)
#
# Installs what is missing: Debian's `postgresql` with apt-get, `s3s-fs` with cargo install into
# the tools directory ($DATADONOR_TOOLS, default /var/tmp/datadonor-tools), never into the repository.
# The variables printed:
#   DATADONOR_TEST_POSTGRES      postgres://datadonor:<password>@127.0.0.1:<port>/datadonor
#   DATADONOR_TEST_POSTGRES_TLS  the same server as role `tlsonly` (TLS only), sslmode=require
#   DATADONOR_TEST_POSTGRES_CA   the PEM CA of the server's certificate
#   DATADONOR_TEST_S3            http://127.0.0.1:<port> (bucket `datadonor`, exists)
#   DATADONOR_TEST_S3_ACCESS_KEY, DATADONOR_TEST_S3_SECRET_KEY
#   DATADONOR_STORAGE_DIR        the temporary directory (data, logs, pids), removed by `stop`
# The passwords are random per start and exist only in that directory and these variables.
set -euo pipefail

S3S_VERSION=0.14.1
tools_dir="${DATADONOR_TOOLS:-/var/tmp/datadonor-tools}"

log() { echo "storage-servers: $*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
  done
  return 1
}

# Run a command as the `postgres` user when we are root (initdb and postgres refuse root).
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

install_missing() {
  if ! pg_bindir >/dev/null; then
    log "installing postgresql (apt-get)"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  fi
  if [ ! -x "$tools_dir/bin/s3s-fs" ]; then
    log "installing s3s-fs $S3S_VERSION into $tools_dir"
    cargo install --quiet --locked s3s-fs --version "$S3S_VERSION" --features binary \
      --root "$tools_dir" >&2
  fi
}

start() {
  install_missing
  local bindir dir pg_port s3_port pg_pass ak sk
  bindir="$(pg_bindir)"
  dir="$(mktemp -d "${TMPDIR:-/tmp}/datadonor-storage.XXXXXX")"
  chmod 0755 "$dir"
  pg_port="$(free_port)"
  s3_port="$(free_port)"
  pg_pass="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
  ak="dd$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')"
  sk="$(od -An -tx1 -N20 /dev/urandom | tr -d ' \n')"

  # PostgreSQL: password (SCRAM) authentication, loopback only, socket in the temporary directory.
  mkdir -p "$dir/pg"
  printf '%s\n' "$pg_pass" >"$dir/pg.pass"
  chmod 0600 "$dir/pg.pass"
  if [ "$(id -u)" = 0 ]; then chown -R postgres "$dir/pg" "$dir/pg.pass"; fi
  as_pg "$bindir/initdb" -D "$dir/pg/data" -U datadonor --pwfile="$dir/pg.pass" \
    --auth=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$dir/pg/initdb.log" 2>&1 ||
    { cat "$dir/pg/initdb.log" >&2; exit 1; }
  # TLS with a throwaway CA (server certificate for 127.0.0.1 and localhost). The role `tlsonly` may
  # connect over TLS only, so a test logged in as it has proved the connection was encrypted.
  local tls="$dir/pg/tls"
  mkdir -p "$tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=datadonor test CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$tls/server.key" \
    -out "$tls/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
    >"$tls/ext.cnf"
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
    -days 2 -extfile "$tls/ext.cnf" -out "$tls/server.pem" 2>/dev/null
  chmod 0600 "$tls/server.key" "$tls/ca.key"
  if [ "$(id -u)" = 0 ]; then chown -R postgres "$tls"; fi
  {
    echo "hostnossl all tlsonly 127.0.0.1/32 reject"
    cat "$dir/pg/data/pg_hba.conf"
  } >"$dir/pg/hba.new"
  if [ "$(id -u)" = 0 ]; then chown postgres "$dir/pg/hba.new"; fi
  as_pg cp "$dir/pg/hba.new" "$dir/pg/data/pg_hba.conf"
  as_pg "$bindir/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/server.log" -w \
    -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $dir/pg -c fsync=on -c synchronous_commit=on -c ssl=on -c ssl_cert_file=$tls/server.pem -c ssl_key_file=$tls/server.key" \
    start >&2 || { cat "$dir/pg/server.log" >&2; exit 1; }
  PGPASSWORD="$pg_pass" "$bindir/createdb" -h 127.0.0.1 -p "$pg_port" -U datadonor datadonor
  PGPASSWORD="$pg_pass" "$bindir/psql" -q -h 127.0.0.1 -p "$pg_port" -U datadonor datadonor \
    -c "CREATE ROLE tlsonly LOGIN PASSWORD '$pg_pass'; GRANT ALL ON SCHEMA public TO tlsonly;" >&2
  cp "$tls/ca.pem" "$dir/pg-ca.pem"
  echo "$bindir" >"$dir/pg.bindir"

  # S3: s3s-fs over a directory; a bucket is a directory.
  mkdir -p "$dir/s3/datadonor"
  "$tools_dir/bin/s3s-fs" --host 127.0.0.1 --port "$s3_port" --access-key "$ak" --secret-key "$sk" \
    "$dir/s3" >"$dir/s3.log" 2>&1 &
  echo $! >"$dir/s3.pid"
  local i
  for i in $(seq 1 100); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $s3_port), 0.2)" 2>/dev/null; then
      break
    fi
    if [ "$i" = 100 ]; then cat "$dir/s3.log" >&2; log "s3s-fs did not start"; exit 1; fi
    sleep 0.1
  done

  log "PostgreSQL on 127.0.0.1:$pg_port, S3 (s3s-fs) on 127.0.0.1:$s3_port, state in $dir"
  echo "export DATADONOR_STORAGE_DIR=$dir"
  echo "export DATADONOR_TEST_POSTGRES=postgres://datadonor:$pg_pass@127.0.0.1:$pg_port/datadonor"
  echo "export DATADONOR_TEST_POSTGRES_TLS=postgres://tlsonly:$pg_pass@127.0.0.1:$pg_port/datadonor?sslmode=require"
  echo "export DATADONOR_TEST_POSTGRES_CA=$dir/pg-ca.pem"
  echo "export DATADONOR_TEST_S3=http://127.0.0.1:$s3_port"
  echo "export DATADONOR_TEST_S3_ACCESS_KEY=$ak"
  echo "export DATADONOR_TEST_S3_SECRET_KEY=$sk"
}

stop() {
  local dir="${1:-${DATADONOR_STORAGE_DIR:-}}"
  if [ -z "$dir" ] || [ ! -d "$dir" ]; then
    log "nothing to stop (no DATADONOR_STORAGE_DIR)"
    return 0
  fi
  case "$dir" in
    */datadonor-storage.*) ;;
    *) log "refusing to remove $dir: not a directory this script created"; exit 1 ;;
  esac
  if [ -f "$dir/s3.pid" ]; then
    kill "$(cat "$dir/s3.pid")" 2>/dev/null || true
  fi
  if [ -f "$dir/pg.bindir" ] && [ -d "$dir/pg/data" ]; then
    as_pg "$(cat "$dir/pg.bindir")/pg_ctl" -D "$dir/pg/data" -m immediate -w stop >&2 || true
  fi
  rm -rf "$dir"
  log "stopped and removed $dir"
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:-}" ;;
  *) echo "usage: $0 start|stop [dir]" >&2; exit 2 ;;
esac
