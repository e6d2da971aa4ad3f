#!/usr/bin/env bash
# The door's costs of bench/RESULTS.md (issue 27): mobilenet_v2 over TLS beside plain HTTP, with API keys and a
# rate limit beside none; what a TLS handshake costs; how long a refused key takes, by how close it was.
#
#   bench/security.sh [seconds-per-case] [rounds]    (default 20 and 3; `make bench-security`)
#
# 1. Classify at concurrency 32 (hey, tests/data/images/china.jpg to /v1/classify, keep-alive): four
#    configurations, plain, TLS, keys + rate limit, and TLS + keys + rate limit, taking turns for $rounds rounds
#    (a fresh server each time, the order rotated each round) so that the machine's drift falls on all of them;
#    the medians of the rounds and their ratio to plain. Keys: a file of 100 keys; the rate limit (100000:100000)
#    refuses nothing but is taken from on every request.
# 2. A new connection per request (hey -disable-keepalive, one client, GET /health/live): plain, TLS with an
#    ECDSA P-256 certificate, TLS with an RSA 2048 one. Per request: the client's mean latency (from requests/s)
#    and the server's CPU time (utime + stime of /proc/PID/stat). The difference to plain is the handshake.
# 3. Refused keys over HTTP (one client, keep-alive, GET /v1/models): a near miss of a real key (its last
#    character changed) beside a wrong key of the same length, in turns; then bench/key_timing.rs in process.
# The certificates are made here with openssl, for 127.0.0.1; hey does not verify them. hey sends the URL's
# host:port as the TLS server name, which rustls refuses (RFC 6066 has no port there): `-host localhost` names it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
rounds=${2:-3}
short=$(( seconds / 2 > 5 ? seconds / 2 : 5 ))
port=18080
image=tests/data/images/china.jpg
source bench/lib.sh
require bench-security target/release/examples/key_timing "$image"
need_hey

certificate() { # certificate NAME OPENSSL-NEWKEY-ARGS...
  openssl req -x509 -nodes -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$workdir/$1.key" -out "$workdir/$1.crt" "${@:2}" 2>/dev/null
}
certificate ecdsa -newkey ec -pkeyopt ec_paramgen_curve:prime256v1
certificate rsa -newkey rsa:2048
keys=$workdir/keys
for i in $(seq 1 100); do echo "client$i:$(openssl rand -hex 32)"; done > "$keys"
key=$(sed -n '50s/^[^:]*://p' "$keys")
near_miss="${key%?}$([ "${key: -1}" = 0 ] && echo 1 || echo 0)"
wrong=$(openssl rand -hex 32)
repo=$(make_repo mobilenet_v2 '' classify)
tls=(--tls-cert "$workdir/ecdsa.crt" --tls-key "$workdir/ecdsa.key")
door=(--api-keys-file "$keys" --rate-limit 100000:100000)
bearer="Authorization: Bearer $key"

flags_of() { # sets `flags` for a configuration's name
  case $1 in
    plain) flags=() ;;
    tls) flags=("${tls[@]}") ;;
    keys) flags=("${door[@]}") ;;
    tls+keys) flags=("${tls[@]}" "${door[@]}") ;;
    tls-rsa) flags=(--tls-cert "$workdir/rsa.crt" --tls-key "$workdir/rsa.key") ;;
  esac
}
scheme_of() { [[ $1 == tls* ]] && echo https || echo http; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$server_pid/stat"; }

# hey_get CONCURRENCY URL [HEY-FLAG...]: $short seconds of GETs; prints requests/s, p50 ms, p99 ms, answers, and
# the status codes as CODE=COUNT.
hey_get() {
  local out="$workdir/hey-get.txt"
  hey -z "${short}s" -c "$1" "${@:3}" "$2" > "$out"
  awk '/Requests\/sec:/ { rps = $2 } / 50% in / { p50 = $3 * 1000 } / 99% in / { p99 = $3 * 1000 }
       /^Status code distribution:/ { s = 1; next } /^Error distribution:/ { s = 0; errors = 1 }
       s && $1 ~ /^\[[0-9]+\]$/ { codes = codes substr($1, 2, 3) "=" $2 " "; n += $2 }
       END { printf "%.1f %.2f %.2f %d %s%s\n", rps, p50, p99, n, codes, errors ? "errors" : "" }' "$out"
}

# in_turn ROUND NAME...: the names, rotated by the round, so that no case always runs first (after a server's
# start) or last (on a machine that has warmed up).
in_turn() { local round=$1; shift; local n=$# i; for (( i = 0; i < n; i++ )); do local k=$(( (i + round - 1) % n + 1 )); echo "${!k}"; done; }

# median_of FILE COLUMN CONFIG: the median of a column over the rows of one configuration.
median_of() { awk -v c="$2" -v k="$3" '$1 == k { print $c }' "$1" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

run_heading
echo
echo "### mobilenet_v2 at concurrency 32: TLS and the door's checks (${rounds} rounds, a fresh server per case)"
echo
echo "| round | configuration | requests/s | p50 ms | p99 ms | non-200 |"
echo "|---|---|---|---|---|---|"
rows=$workdir/classify.rows
for round in $(seq 1 "$rounds"); do
  for config in $(in_turn "$round" plain tls keys tls+keys); do
    flags_of "$config"
    start_server "$repo" "${flags[@]}"
    header=""
    [[ $config == *keys ]] && header=$bearer
    row=$(hey_row 32 "$(scheme_of "$config")://127.0.0.1:$port/v1/classify?top_k=1" image/jpeg "$image" "$header" -host localhost)
    stop_server
    echo "| $round | $config ${row#| 32 }"
    # configuration rps p50 p99 non-200
    echo "$config $(echo "$row" | awk -F'|' '{ print $3, $4, $5, $6 }')" >> "$rows"
  done
done
echo
echo "Medians of the rounds:"
echo
echo "| configuration | requests/s | p50 ms | p99 ms | requests/s vs plain | p99 vs plain |"
echo "|---|---|---|---|---|---|"
base_rps=$(median_of "$rows" 2 plain)
base_p99=$(median_of "$rows" 4 plain)
for config in plain tls keys tls+keys; do
  rps=$(median_of "$rows" 2 "$config") p50=$(median_of "$rows" 3 "$config") p99=$(median_of "$rows" 4 "$config")
  awk -v c="$config" -v r="$rps" -v m="$p50" -v p="$p99" -v br="$base_rps" -v bp="$base_p99" \
    'BEGIN { printf "| %s | %.1f | %.1f | %.1f | %.2fx | %.2fx |\n", c, r, m, p, r / br, p / bp }'
done

echo
echo "### A new connection per request (one client, GET /health/live, ${short} s per case, ${rounds} rounds)"
echo
echo "| round | configuration | connections/s | client ms per request | server CPU ms per request | answers |"
echo "|---|---|---|---|---|---|"
rows=$workdir/handshake.rows
for round in $(seq 1 "$rounds"); do
  for config in $(in_turn "$round" plain tls tls-rsa); do
    flags_of "$config"
    start_server "$repo" "${flags[@]}"
    before=$(cpu_ticks)
    read -r rps _ _ answers codes < <(hey_get 1 "$(scheme_of "$config")://127.0.0.1:$port/health/live" -disable-keepalive -host localhost)
    cpu_ms=$(awk -v t="$(( $(cpu_ticks) - before ))" -v n="$answers" -v hz="$(getconf CLK_TCK)" \
      'BEGIN { printf "%.3f", t * 1000 / hz / n }')
    stop_server
    latency=$(awk -v r="$rps" 'BEGIN { printf "%.3f", 1000 / r }')
    echo "| $round | $config | $rps | $latency | $cpu_ms | $codes |"
    echo "$config $rps $latency $cpu_ms" >> "$rows"
  done
done
echo
echo "| configuration (medians) | client ms per request | server CPU ms per request | handshake: client ms | handshake: server CPU ms |"
echo "|---|---|---|---|---|"
base_latency=$(median_of "$rows" 3 plain)
base_cpu=$(median_of "$rows" 4 plain)
for config in plain tls tls-rsa; do
  latency=$(median_of "$rows" 3 "$config") cpu=$(median_of "$rows" 4 "$config")
  awk -v c="$config" -v l="$latency" -v u="$cpu" -v bl="$base_latency" -v bu="$base_cpu" \
    'BEGIN { printf "| %s | %.3f | %.3f | %.3f | %.3f |\n", c, l, u, l - bl, u - bu }'
done

echo
echo "### Refused keys over HTTP (one client, keep-alive, GET /v1/models, 100 keys, ${short} s per case, ${rounds} rounds)"
echo
echo "| round | presented | requests/s | mean ms | p50 ms | p99 ms | answers |"
echo "|---|---|---|---|---|---|---|"
rows=$workdir/keys.rows
start_server "$repo" --api-keys-file "$keys"
for round in $(seq 1 "$rounds"); do
  for presented in $(in_turn "$round" near-miss wrong); do
    value=$near_miss
    [ "$presented" = wrong ] && value=$wrong
    read -r rps p50 p99 _ codes < <(hey_get 1 "http://127.0.0.1:$port/v1/models" -H "Authorization: Bearer $value")
    mean=$(awk -v r="$rps" 'BEGIN { printf "%.4f", 1000 / r }')
    echo "| $round | $presented | $rps | $mean | $p50 | $p99 | $codes |"
    echo "$presented $rps $mean" >> "$rows"
  done
done
stop_server
near=$(median_of "$rows" 3 near-miss) far=$(median_of "$rows" 3 wrong)
awk -v n="$near" -v w="$far" 'BEGIN { printf "\nmedian mean ms: near miss %.4f, wrong key %.4f: %.3fx\n", n, w, n / w }'
echo
echo "### bench/key_timing.rs: KeySet::find in process"
echo
target/release/examples/key_timing 100
