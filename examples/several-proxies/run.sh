#!/usr/bin/env bash
# Two Portcullis behind one PAC, on this machine only: the set-up of
# docs/src/several-proxies.md with every address moved to 127.0.0.1 (nothing leaves the
# machine). It starts a web server to fetch from (python3), Redis for the byte budgets (when
# redis-server is installed), Vector (when `vector` is installed) and proxy-a and proxy-b from
# proxy-a.toml and proxy-b.toml; fetches through each; prints the PAC file, each proxy's
# instance from /status.json and a line of its metrics; and reports over both access logs
# with `portcullis report --by instance`. Everything it started is stopped on exit.
#
#   examples/several-proxies/run.sh                 # target/release/portcullis
#   PORTCULLIS_BIN=target/debug/portcullis examples/several-proxies/run.sh
#   KEEP=1 examples/several-proxies/run.sh          # keep the folder with logs and configs
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${PORTCULLIS_BIN:-$root/target/release/portcullis}"

say() { printf '%s\n' "$*"; }
fail() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

[ -x "$bin" ] || fail "no $bin: build it with \`cargo build --release\`, or name the binary in PORTCULLIS_BIN"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
for tool in curl python3; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is needed (apt-get install $tool)"
done

work="$(mktemp -d "${TMPDIR:-/tmp}/portcullis-several.XXXXXX")"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${KEEP:-}" = 1 ]; then
    say "kept: $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A port free on 127.0.0.1 now (the kernel picks it).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits up to 10 s for something to accept connections on 127.0.0.1:$1.
wait_port() {
  local i
  for i in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  fail "nothing answers on 127.0.0.1:$1 after 10 s${2:+ ($2)}"
}

# curl without the environment's proxy settings, bounded in time.
fetch() {
  env -u http_proxy -u HTTP_PROXY -u https_proxy -u HTTPS_PROXY -u all_proxy -u ALL_PROXY \
    -u no_proxy -u NO_PROXY curl -sS --max-time 10 "$@"
}

proxy_a=$(free_port) proxy_b=$(free_port) admin_a=$(free_port) admin_b=$(free_port)
redis_port=$(free_port) syslog_port=$(free_port) web_port=$(free_port)

# The configuration files with the LAN's addresses moved to this machine: $1 the file, $2
# the folder for this proxy's log, state and configuration.
localize() {
  mkdir -p "$2"
  sed -e "s/192\.168\.1\.2:3128/127.0.0.1:$proxy_a/g" \
      -e "s/192\.168\.1\.3:3128/127.0.0.1:$proxy_b/g" \
      -e "s/192\.168\.1\.2:3129/127.0.0.1:$admin_a/g" \
      -e "s/192\.168\.1\.3:3129/127.0.0.1:$admin_b/g" \
      -e "s#redis://redis\.lan:6379/#redis://127.0.0.1:$redis_port/#" \
      -e "s#tcp://logs\.lan:6514#tcp://127.0.0.1:$syslog_port#" \
      -e "s#/var/log/portcullis/#$2/#" \
      -e "s#/var/lib/portcullis#$2/state#" \
      "$1" >"$2/portcullis.toml"
  # The web server of this example is on loopback, which a proxy refuses unless told.
  printf '\n[destinations]\nallow_loopback = true\n' >>"$2/portcullis.toml"
}
localize "$here/proxy-a.toml" "$work/a"
localize "$here/proxy-b.toml" "$work/b"

# Leaves out of both files what $1 matches (sed addresses), saying why ($2).
strip() {
  sed -i -e "$1" "$work/a/portcullis.toml" "$work/b/portcullis.toml"
  say "$2"
}

# Redis, for the byte budgets both proxies share.
if command -v redis-server >/dev/null 2>&1; then
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    >"$work/redis.out" 2>&1 &
  pids+=($!)
  wait_port "$redis_port" redis-server
  say "redis-server on 127.0.0.1:$redis_port"
else
  strip '/^store = /d' "redis-server is not installed: the proxies count budgets each on its own"
fi

# Vector, receiving both proxies' records by syslog.
merged=""
if command -v vector >/dev/null 2>&1; then
  mkdir -p "$work/vector"
  sed -e "s/0\.0\.0\.0:6514/127.0.0.1:$syslog_port/" \
      -e "s#/var/lib/vector#$work/vector#" \
      -e "s#/var/log/portcullis/#$work/vector/#" \
      "$here/vector.toml" >"$work/vector/vector.toml"
  vector --config "$work/vector/vector.toml" >"$work/vector/vector.out" 2>&1 &
  pids+=($!)
  wait_port "$syslog_port" vector
  merged="$work/vector"
  say "vector on 127.0.0.1:$syslog_port"
else
  strip '/^syslog/d' "vector is not installed: the proxies send no syslog"
fi

# What this build of Portcullis accepts: `[state] store` and `[[quotas]]` came later than
# the rest; without them the proxies run, and say nothing of budgets.
for attempt in 1 2 3; do
  if "$bin" check --config "$work/a/portcullis.toml" >"$work/check.out" 2>&1; then
    break
  elif grep -q 'unknown field `store`' "$work/check.out"; then
    strip '/^store = /d' "this portcullis does not know [state] store yet: running without the shared store"
  elif grep -q 'unknown field `quotas`' "$work/check.out"; then
    strip '/^\[\[quotas\]\]/,/^per = /d' "this portcullis does not know [[quotas]] yet: running without byte budgets"
  else
    cat "$work/check.out" >&2
    fail "portcullis check refused $work/a/portcullis.toml"
  fi
  [ "$attempt" -lt 3 ] || fail "portcullis check still refuses $work/a/portcullis.toml"
done

# A web site to fetch from.
mkdir -p "$work/site"
printf 'hello from the origin\n' >"$work/site/hello.txt"
python3 -m http.server "$web_port" --bind 127.0.0.1 --directory "$work/site" \
  >"$work/web.out" 2>&1 &
pids+=($!)
wait_port "$web_port" "python3 -m http.server"

for name in a b; do
  "$bin" --config "$work/$name/portcullis.toml" >"$work/$name/proxy.out" 2>&1 &
  pids+=($!)
done
wait_port "$proxy_a" proxy-a
wait_port "$proxy_b" proxy-b
wait_port "$admin_a" "proxy-a's admin listener"
wait_port "$admin_b" "proxy-b's admin listener"
say "proxy-a on 127.0.0.1:$proxy_a (admin 127.0.0.1:$admin_a), proxy-b on 127.0.0.1:$proxy_b (admin 127.0.0.1:$admin_b)"

say
say "The PAC file, as proxy-b serves it (proxy-a serves the same), ends with:"
fetch "http://127.0.0.1:$proxy_b/proxy.pac" | tail -n 2

say
say "Through each proxy:"
site="http://127.0.0.1:$web_port"
for pair in "a $proxy_a" "a $proxy_a" "b $proxy_b"; do
  set -- $pair
  printf 'proxy-%s: GET %s/hello.txt -> %s' "$1" "$site" "$(fetch -x "http://127.0.0.1:$2" "$site/hello.txt")"
  say
done
# Port 25 is not among the ports plain HTTP may reach: a refusal, counted and logged.
status=$(fetch -o /dev/null -w '%{http_code}' -x "http://127.0.0.1:$proxy_a" "http://127.0.0.1:25/")
say "proxy-a: GET http://127.0.0.1:25/ -> $status"

say
for name in a b; do
  admin_port=$([ "$name" = a ] && echo "$admin_a" || echo "$admin_b")
  instance=$(fetch "http://127.0.0.1:$admin_port/status.json" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["instance"])')
  requests=$(fetch "http://127.0.0.1:$admin_port/metrics" |
    awk '/^portcullis_requests_total\{/ { n += $NF } END { print n + 0 }')
  say "/status.json of 127.0.0.1:$admin_port: instance $instance; /metrics: portcullis_requests_total $requests"
done

# Each proxy writes its record when an exchange ends: wait (10 s at most) for all of them,
# the PAC file's included.
wanted_a=3 wanted_b=2
for i in $(seq 100); do
  have_a=$(cat "$work/a/access.log" 2>/dev/null | wc -l)
  have_b=$(cat "$work/b/access.log" 2>/dev/null | wc -l)
  [ "$have_a" -ge "$wanted_a" ] && [ "$have_b" -ge "$wanted_b" ] && break
  sleep 0.1
done

say
say "portcullis report --by instance a/access.log b/access.log"
(cd "$work" && "$bin" report --by instance a/access.log b/access.log)

if [ -n "$merged" ]; then
  for i in $(seq 100); do
    [ "$(cat "$merged"/all-*.log 2>/dev/null | wc -l)" -ge $((wanted_a + wanted_b)) ] && break
    sleep 0.1
  done
  say
  say "portcullis report --by instance over the file Vector merged"
  (cd "$merged" && "$bin" report --by instance all-*.log)
fi
