#!/usr/bin/env bash
# `make swarm-check` (issue 28; not part of `make test`): ember's image on Docker Swarm, replicas sharing one model
# repository behind HAProxy, with Prometheus, checked under steady traffic. Run as root, after `make image`:
#
#   deploy/swarm/check.sh
#
# 1. dockerd: the one running, else started here (--iptables=false --bridge=none: host networking only) and
#    stopped at the end; a single-node swarm: the one there is, else `docker swarm init` here, left at the end.
# 2. images: ember's (EMBER_IMAGE, default localhost/ember:<version>, which `make image` leaves in podman's store:
#    copied into dockerd's), a second tag of it for the rolling update, and HAProxy's and Prometheus's from
#    deploy/swarm/Dockerfile (Debian's packages on the same debian:bookworm-slim). Kept for the next run.
#    Then the image alone in a container: read-only, UID 10001, no capabilities, --cpus 1 --memory 1g; it must turn
#    healthy by its own HEALTHCHECK, count one core in `ember info` (one worker per model), and exit 0 on
#    `docker stop`.
# 3. the shared repository: mobilenet_v2 and sentiment copied from models/ into a scratch folder owned by UID
#    10001, bind-mounted into every replica; tweets of the vaderSentiment archive (the venv's sources) to fine-tune
#    sentiment on.
# 4. the stack `ember` (deploy/swarm/stack.yaml) with 3 replicas; then 8 clients (deploy/swarm/load.py) send
#    classify and sentiment through HAProxy for the whole of these phases, each bounded in time:
#      spread     all 3 replicas answer (HAProxy's header, and each replica's count scraped by Prometheus);
#      train-job  `ember train` as a Swarm job (--mode replicated-job) publishes sentiment version 2 into the
#                 repository; every replica must serve it within 15 s of the publish;
#      rolling    `docker service update --image` to the second tag, one replica at a time;
#      kill       `docker kill` of one replica's container: Swarm starts another, which turns ready and answers;
#      scale      3 -> 5 -> 2 replicas;
#      admin      the admin API's fine-tune on replica 1 publishes version 3; how long until every replica
#                 serves it (the repository watcher).
#    Passes when no answer of any phase was other than 200 and none was missing.
# 5. the summary (a table per phase, also written to dist/swarm-check.md), then everything this run
#    started is removed: the clients, the stack, the job, the scratch folder, the swarm and dockerd if it made them.
# Environment: EMBER_IMAGE; SWARM_KEEP=1 leaves the stack running for a look (remove with `docker stack rm ember`).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/deploy/swarm
cd "$root"
[ "$(id -u)" = 0 ] || { echo "deploy/swarm/check.sh runs as root (dockerd, the bind mount's owner)" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
image=${EMBER_IMAGE:-localhost/ember:$version}
rolled=${image%:*}:$version-rolled
stack=ember
service=${stack}_ember
admin_token=swarm-check-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')
url=http://127.0.0.1:18180
photo=$root/tests/data/images/china.jpg
report=$root/dist/swarm-check.md
work=$(mktemp -d /var/tmp/ember-swarm.XXXXXX)
models=$work/models
phases=$work/phases
started_swarm="" load_pid=""

log() { echo "== $(date -u +%H:%M:%S) $*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

cleanup() {
  local status=$?
  [ -n "$load_pid" ] && { touch "$work/stop"; wait "$load_pid" 2>/dev/null || true; }
  if [ "${SWARM_KEEP:-0}" != 1 ]; then
    docker rm -f ember-container-check >/dev/null 2>&1 || true
    docker service rm ember-train >/dev/null 2>&1 || true
    if docker stack ls --format '{{.Name}}' 2>/dev/null | grep -qx "$stack"; then
      docker stack rm "$stack" >/dev/null
      # The containers go after the stack's services: wait, so that nothing is left running.
      for _ in $(seq 1 120); do
        [ -z "$(docker ps -q --filter "label=com.docker.stack.namespace=$stack")" ] && break
        sleep 0.5
      done
    fi
    [ -n "$started_swarm" ] && docker swarm leave --force >/dev/null 2>&1
    docker_stop
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. dockerd and the swarm ------------------------------------------------------------------------------------
source "$root/deploy/docker.sh"
docker_start "$work" || fail "no dockerd"
if [ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != active ]; then
  log "swarm: docker swarm init on 127.0.0.1"
  docker swarm init --advertise-addr 127.0.0.1 >/dev/null
  started_swarm=1
fi
docker stack ls --format '{{.Name}}' | grep -qx "$stack" && fail "a stack named $stack runs already"

# --- 2. images ---------------------------------------------------------------------------------------------------
if [ -z "${EMBER_IMAGE:-}" ] && ! podman image exists "$image" 2>/dev/null; then
  log "image $image: none in podman's store; make image"
  make image
fi
docker_from_podman "$image" || fail "run make image"
docker_from_podman localhost/debian:bookworm-slim || fail "run make image (it makes the base image)"
docker tag localhost/debian:bookworm-slim debian:bookworm-slim
# The rolling update's tag: the same image with one more label, so that the update replaces every task.
printf 'FROM %s\nLABEL org.opencontainers.image.version="%s-rolled"\n' "$image" "$version" |
  docker build -q -t "$rolled" - >/dev/null 2>&1
for helper in haproxy prometheus; do
  docker build -q --network host --target "$helper" -t "localhost/ember-$helper:local" "$here" >/dev/null 2>&1 ||
    fail "cannot build the $helper image (deploy/swarm/Dockerfile)"
done
log "images: $image, $rolled, localhost/ember-haproxy:local, localhost/ember-prometheus:local"

# --- 2b. the image alone, in a container ------------------------------------------------------------------------
log "container: docker run $image, as an operator would"
container=$(docker_container_check "$image" 18199) || { echo "$container"; fail "the image alone"; }
log "$container"

# --- 3. the shared repository and the training data ------------------------------------------------------------
mkdir -p "$models" "$work/data"
cp -r models/mobilenet_v2 models/sentiment "$models/"
find "$models" -name '__pycache__' -prune -exec rm -rf {} +
chown -R 10001:10001 "$models"
# The tweets as the sentiment export reads them (models/export/sentiment.py's hutto_sets: the sign of the mean
# rating, zeros dropped), 120 to train the job on and 120 for the admin API.
.venv/bin/python - "$work/data" <<'PY'
import csv, random, sys
sys.path.insert(0, "models/export")
from sentiment import hutto_sets
tweets = [(text, "positive" if label else "negative") for text, label in hutto_sets()["tweets"]]
random.Random(28).shuffle(tweets)
for name, part in (("tweets.csv", tweets[:120]), ("more_tweets.csv", tweets[120:240])):
    with open(f"{sys.argv[1]}/{name}", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(part)
PY
chmod -R a+rX "$work/data"

# --- 4. the stack and the phases ---------------------------------------------------------------------------------
# ready_ports: the replica ports (18181..18189) whose /health/ready answers 200.
ready_ports() {
  local n
  for n in $(seq 1 9); do
    curl -sf -m 1 -o /dev/null "http://127.0.0.1:1818$n/health/ready" && echo "1818$n"
  done
  return 0
}
# wait_ready COUNT SECONDS: until exactly COUNT replicas are ready, and Swarm's tasks are running and healthy.
wait_ready() {
  local deadline=$(($(date +%s) + $2))
  until [ "$(ready_ports | wc -l)" = "$1" ] &&
    [ "$(docker service ls --filter "name=$service" --format '{{.Replicas}}')" = "$1/$1" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "not $1 replicas ready within $2 s: $(ready_ports | paste -sd ' ')"
    sleep 0.5
  done
}
# served_version PORT: the version of sentiment that replica serves.
served_version() {
  curl -sf -m 2 "http://127.0.0.1:$1/v1/models/sentiment" | sed -n 's/.*"served_version":\([0-9]*\).*/\1/p'
}
# wait_version VERSION SECONDS: until every ready replica serves it; prints how long that took.
wait_version() {
  local start deadline port pending
  start=$(now)
  deadline=$(($(date +%s) + $2))
  while :; do
    pending=""
    for port in $(ready_ports); do [ "$(served_version "$port")" = "$1" ] || pending="$pending $port"; done
    [ -z "$pending" ] && break
    [ "$(date +%s)" -lt "$deadline" ] || fail "sentiment version $1 not served within $2 s by:$pending"
    sleep 0.2
  done
  since "$start"
}
# wait_published VERSION SECONDS: until sentiment/VERSION is in the repository (published: not .partial).
wait_published() {
  local deadline=$(($(date +%s) + $2))
  until [ -f "$models/sentiment/$1/model.pt" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "sentiment version $1 not published within $2 s"
    sleep 0.2
  done
}
phase_start=""
begin() { phase=$1; phase_start=$(now); log "phase $phase"; }
end() { echo "$phase $phase_start $(now)" >>"$phases"; log "phase $phase: $(since "$phase_start") s"; }
# answered_by REPLICA SINCE: answers of that HAProxy server name in the load log after SINCE.
answered_by() { awk -v r="$1" -v t="$2" '$1 >= t && $4 == r && $3 == 200' "$work/load.log" | wc -l; }

log "stack $stack: 3 replicas of $image, HAProxy on $url, Prometheus on 127.0.0.1:18190"
deploy_start=$(now)
EMBER_IMAGE=$image EMBER_MODELS=$models EMBER_ADMIN_TOKEN=$admin_token \
  docker stack deploy --resolve-image never -c "$here/stack.yaml" "$stack" >"$work/deploy.log" 2>&1 ||
  { cat "$work/deploy.log"; fail "docker stack deploy"; }
wait_ready 3 300
ready_s=$(since "$deploy_start")
log "3 replicas ready after $ready_s s"
for _ in $(seq 1 60); do curl -sf -m 1 -o /dev/null "$url/health/ready" && break; sleep 0.5; done
python3 "$here/load.py" run "$url" "$photo" "$work/load.log" "$work/stop" --clients 8 &
load_pid=$!

begin spread
sleep 20
end
for r in replica1 replica2 replica3; do
  [ "$(answered_by "$r" "$phase_start")" -gt 0 ] || fail "$r answered nothing through HAProxy"
done
scraped=$(curl -sf "http://127.0.0.1:18190/api/v1/query" \
  --data-urlencode 'query=sum by (instance) (increase(ember_requests_total[30s])) > 0' |
  grep -o '"instance":"[^"]*"' | sort | paste -sd ' ')
[ "$(echo "$scraped" | wc -w)" = 3 ] || fail "Prometheus did not see requests on 3 replicas: $scraped"
log "Prometheus saw requests on: $scraped"

begin train-job
job_start=$(now)
docker service create --detach --quiet --name ember-train --mode replicated-job --restart-condition none \
  --no-healthcheck --network host --user 10001:10001 --read-only --mount type=tmpfs,destination=/tmp \
  --mount "type=bind,source=$models,destination=/models" \
  --mount "type=bind,source=$work/data,destination=/data,readonly" \
  --limit-cpu 1 "$image" \
  train --model-repo /models --model sentiment --data /data/tweets.csv --epochs 1 >"$work/job.log" 2>&1 ||
  { cat "$work/job.log"; fail "docker service create (the training job)"; }
wait_published 2 600
train_s=$(since "$job_start")
everywhere_2=$(wait_version 2 15)
log "version 2 published by the job after $train_s s; every replica served it $everywhere_2 s after"
for _ in $(seq 1 120); do
  [ "$(docker service ps ember-train --format '{{.CurrentState}}' | grep -c Complete)" = 1 ] && break
  sleep 0.5
done
docker service ps ember-train --format '{{.CurrentState}}' | grep -q Complete || fail "the training job did not complete"
docker service rm ember-train >/dev/null
end

begin rolling
timeout 300 docker service update --quiet --detach=false --image "$rolled" "$service" >/dev/null 2>&1 ||
  fail "the rolling update did not converge within 300 s"
wait_ready 3 120
images=$(docker service ps "$service" --filter desired-state=running --format '{{.Image}}' | sort -u | paste -sd ' ')
[ "$images" = "$rolled" ] || fail "after the update the replicas run: $images"
end

begin kill
# containers: "ID TASK-NAME" of the service's running containers (a task name is <service>.<slot>.<task id>).
containers() {
  docker ps --filter "label=com.docker.swarm.service.name=$service" \
    --format '{{.ID}} {{.Label "com.docker.swarm.task.name"}}'
}
read -r victim task < <(containers | head -n 1)
slot=$(echo "$task" | cut -d. -f2)
docker kill "$victim" >/dev/null
kill_at=$(now)
deadline=$(($(date +%s) + 120))
until containers | awk -v s="$slot" -v v="$victim" '{ split($2, p, "."); if (p[2] == s && $1 != v) n++ }
                                                   END { exit n != 1 }' &&
  curl -sf -m 1 -o /dev/null "http://127.0.0.1:1818$slot/health/ready"; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "no ready replacement for slot $slot within 120 s"
  sleep 0.5
done
replaced_s=$(since "$kill_at")
back_at=$(now)
sleep 5
[ "$(answered_by "replica$slot" "$back_at")" -gt 0 ] || fail "the replacement of slot $slot answered nothing"
log "slot $slot killed: a replacement was ready after $replaced_s s and answered"
wait_ready 3 60
end

begin scale
timeout 180 docker service scale --detach=false "$service=5" >/dev/null 2>&1 ||
  fail "scale to 5 did not converge within 180 s"
wait_ready 5 180
sleep 3
for r in replica4 replica5; do
  [ "$(answered_by "$r" "$phase_start")" -gt 0 ] || fail "$r answered nothing after scaling to 5"
done
timeout 180 docker service scale --detach=false "$service=2" >/dev/null 2>&1 ||
  fail "scale to 2 did not converge within 180 s"
wait_ready 2 120
end

begin admin
port=$(ready_ports | sed -n 1p)
answer=$(curl -sf -m 30 -H "Authorization: Bearer $admin_token" -F "data=@$work/data/more_tweets.csv" \
  -F 'settings={"epochs": 1}' "http://127.0.0.1:$port/admin/models/sentiment/fine-tune") ||
  fail "the admin API refused the fine-tune"
wait_published 3 600
everywhere_3=$(wait_version 3 30)
log "version 3 published by replica $port's admin API; every replica served it $everywhere_3 s after"
echo "$answer" >"$work/admin-answer.json"
# A few seconds of version 3 answered through HAProxy, for the summary.
sleep 3
end

touch "$work/stop"
wait "$load_pid" || true
load_pid=""
haproxy_counter() {
  curl -sf "http://127.0.0.1:18179/metrics" | awk -v m="$1" '$1 ~ "^" m "\\{proxy=\"ember\"" { s += $2 } END { print s + 0 }'
}
retried=$(haproxy_counter haproxy_backend_retry_warnings_total)
redispatched=$(haproxy_counter haproxy_backend_redispatch_warnings_total)
docker service logs --raw "${stack}_haproxy" >"$work/haproxy.log" 2>&1 || true

# --- 5. the summary ----------------------------------------------------------------------------------------------
mkdir -p "$(dirname "$report")"
{
  echo "## swarm-check of $(date -u +%Y-%m-%dT%H:%MZ): $image, $(nproc) cores"
  echo
  echo "One $container."
  echo
  echo "3 replicas ready after $ready_s s; sentiment v2 (Swarm job, $train_s s) on every replica $everywhere_2 s"
  echo "after its publish; v3 (admin API of one replica) on every replica $everywhere_3 s after; the killed slot's"
  echo "replacement ready after $replaced_s s. HAProxy retried $retried requests and redispatched $redispatched to"
  echo "another replica."
  echo
  python3 "$here/load.py" summary "$work/load.log" "$phases" && verdict=passed || verdict=failed
  echo
  echo "The admin API's answer: $(cat "$work/admin-answer.json")"
  echo
  if [ "$verdict" = failed ]; then
    echo "HAProxy's log of failed, retried and redispatched requests (the last 20 lines):"
    tail -n 20 "$work/haproxy.log"
  fi
  echo "check $verdict"
} | tee "$report"
grep -q "check passed" "$report"
