# Shared by the benchmark scripts (and docs/make_gallery.sh): a temporary work folder, a temporary model
# repository, starting and stopping ember, one hey run. Expects $port to be set by the script that sources it.

ember=target/release/ember
workdir=$(mktemp -d)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$workdir"; }
trap cleanup EXIT

# require MAKE-TARGET [FILE...]: stops with a hint when ember or one of the files has not been built.
require() {
  local target=$1; shift
  for file in "$ember" "$@"; do
    [ -e "$file" ] || { echo "$file is missing: run 'make $target' first" >&2; exit 1; }
  done
}

# hey drives the HTTP load; it is installed from Debian when missing.
need_hey() { command -v hey >/dev/null || { apt-get update -qq && apt-get install -y -qq hey; }; }

# add_model REPO NAME SOURCE [SED]: default model SOURCE into REPO as NAME (its labels and tokenizer copied, its
# version 1 linked), model.toml edited by sed expression SED.
add_model() {
  local repo=$1 name=$2 source=$3 file
  mkdir -p "$repo/$name"
  for file in labels.txt tokenizer.json; do
    [ -f "models/$source/$file" ] && cp "models/$source/$file" "$repo/$name/"
  done
  ln -s "$PWD/models/$source/1" "$repo/$name/1"
  sed -e "${4:-}" "models/$source/model.toml" > "$repo/$name/model.toml"
}

# A repository with default model $1 only, its model.toml edited by sed expression $2; $3 names the copy.
make_repo() {
  local repo="$workdir/repo-$3"
  add_model "$repo" "$1" "$1" "$2"
  echo "$repo"
}

# The heading of a run's results: when, on what CPU, and $seconds per HTTP case.
run_heading() {
  echo "## Run of $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), ${seconds}s per HTTP case"
}

# start_server REPO [FLAG...]: serves REPO (with the flags) and waits until it is ready (asked over TLS when
# the flags give --tls-cert; the bench's own certificate is not verified).
start_server() {
  "$ember" serve --port "$port" --grpc-port "${grpc_port:-0}" --model-repo "$1" "${@:2}" > "$workdir/server.log" 2>&1 &
  server_pid=$!
  local scheme=http
  [[ " ${*:2} " == *" --tls-cert "* ]] && scheme=https
  for _ in $(seq 1 600); do
    curl -sfk "$scheme://127.0.0.1:$port/health/ready" >/dev/null && return 0
    sleep 0.1
  done
  echo "server not ready:" >&2; cat "$workdir/server.log" >&2; exit 1
}

stop_server() {
  kill -TERM "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=""
}

peak_rss_mib() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$server_pid/status"; }

# One hey run of $seconds: hey_row CONCURRENCY URL CONTENT-TYPE BODY-FILE [HEADER [HEY-FLAG...]] prints a table
# row: concurrency, requests/s, p50 ms, p99 ms, non-200 answers. HEADER ("Name: value", or empty) is sent as well.
hey_row() {
  local concurrency=$1 url=$2 content_type=$3 body=$4 out="$workdir/hey.txt"
  local extra=("${@:6}")
  [ -n "${5:-}" ] && extra+=(-H "$5")
  hey -z "${seconds}s" -c "$concurrency" -m POST -T "$content_type" -D "$body" "${extra[@]}" "$url" > "$out"
  local rps p50 p99
  rps=$(awk '/Requests\/sec:/ {printf "%.1f", $2}' "$out")
  p50=$(awk '/ 50% in / {printf "%.1f", $3 * 1000}' "$out")
  # hey prints no 99th percentile below 100 answers; the nearest-rank p99 of fewer than 100 is the slowest one.
  p99=$(awk '/ 99% in / {printf "%.1f", $3 * 1000}' "$out")
  [ -n "$p99" ] || p99=$(awk '/Slowest:/ {printf "%.1f", $2 * 1000}' "$out")
  # Answers other than 200 (hey's status code distribution) plus requests that got no answer (its error
  # distribution: "[count] message").
  local failed
  failed=$(awk '/^Status code distribution:/ { section = "status"; next }
                /^Error distribution:/ { section = "errors"; next }
                $1 ~ /^\[[0-9]+\]$/ { n = substr($1, 2, length($1) - 2)
                                        if (section == "status" && n != 200) failed += $2
                                        if (section == "errors") failed += n }
                END { print failed + 0 }' "$out")
  [ "$failed" = 0 ] || { echo "$url at concurrency $concurrency:"; sed -n '/^Status code distribution:/,$p' "$out"; } >&2
  echo "| $concurrency | $rps | $p50 | $p99 | $failed |"
}
