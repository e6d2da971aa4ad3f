# Docker on this machine, shared by deploy/image.sh (`make image`) and deploy/swarm/check.sh (`make swarm-check`);
# sourced, as root. Debian's docker.io: dockerd with host networking only (--iptables=false --bridge=none), since
# nothing here may be sent beyond the loopback.
#
#   docker_start WORKDIR      the dockerd running, else one started here (its log in WORKDIR); sets docker_started
#   docker_stop               stops the dockerd docker_start started, if it did
#   docker_from_podman IMAGE  copies IMAGE from podman's store into dockerd's, unless it has the same one
#   docker_container_check IMAGE PORT
#                             runs IMAGE as an operator would (read-only root, UID 10001, no capabilities, one CPU,
#                             1 GiB) and fails unless it turns healthy by its own HEALTHCHECK within 180 s, `ember
#                             info` inside counts 1 core, sizes one worker per model and sees the 1 GiB limit,
#                             and `docker stop` drains it with exit status 0; prints what it saw as one line.

docker_started=""

docker_start() {
  command -v dockerd >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends docker.io; }
  docker info >/dev/null 2>&1 && return 0
  echo "dockerd: starting one (host networking only: --iptables=false --bridge=none)"
  dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver=overlay2 >"$1/dockerd.log" 2>&1 &
  docker_started=$!
  local _
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && return 0; sleep 0.5; done
  tail -n 20 "$1/dockerd.log" >&2
  echo "dockerd did not start" >&2
  return 1
}

docker_stop() {
  [ -n "$docker_started" ] || return 0
  kill "$docker_started" 2>/dev/null || true
  wait "$docker_started" 2>/dev/null || true
  docker_started=""
}

docker_from_podman() {
  local id
  id=$(podman image inspect --format '{{.Id}}' "$1" 2>/dev/null) || { echo "no image $1 in podman's store" >&2; return 1; }
  [ "$(docker image inspect --format '{{.Id}}' "$1" 2>/dev/null)" = "sha256:$id" ] && return 0
  echo "image $1: podman save | docker load"
  podman save --format docker-archive "$1" | docker load >/dev/null
}

docker_container_check() {
  local image=$1 port=$2 name=ember-container-check start info cores workers memory rc
  docker rm -f "$name" >/dev/null 2>&1 || true
  start=$(date +%s.%N)
  docker run -d --name "$name" --network host --read-only --tmpfs /tmp --user 10001:10001 --cap-drop ALL \
    --security-opt no-new-privileges --cpus 1 --memory 1g \
    -e EMBER_HOST=127.0.0.1 -e EMBER_PORT="$port" -e EMBER_GRPC_PORT=0 "$image" >/dev/null || return 1
  until [ "$(docker inspect --format '{{.State.Health.Status}}' "$name")" = healthy ]; do
    if [ "$(docker inspect --format '{{.State.Running}}' "$name")" != true ]; then
      docker logs "$name" 2>&1 | tail -n 20
      echo "the container exited before it was healthy" >&2
      docker rm -f "$name" >/dev/null
      return 1
    fi
    if [ "$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print (b - a > 180) }')" = 1 ]; then
      echo "the container is not healthy after 180 s" >&2
      docker rm -f "$name" >/dev/null
      return 1
    fi
    sleep 0.5
  done
  local healthy_s
  healthy_s=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  info=$(docker exec "$name" /opt/ember/bin/ember info)
  cores=$(echo "$info" | sed -n 's/.*(cores: \([0-9]*\)).*/\1/p')
  workers=$(echo "$info" | grep -o 'workers [0-9]* x [0-9]* thread' | sort -u | paste -sd ',' -)
  memory=$(echo "$info" | sed -n 's/^memory limit: \([0-9.]* GiB\).*/\1/p')
  docker stop "$name" >/dev/null
  rc=$(docker inspect --format '{{.State.ExitCode}}' "$name")
  docker rm "$name" >/dev/null
  echo "container (--read-only, UID 10001, --cap-drop ALL, --cpus 1, --memory 1g): healthy by the image's" \
    "HEALTHCHECK after $healthy_s s; ember info inside: $cores core(s), $workers, memory limit $memory;" \
    "docker stop: exit status $rc"
  [ "$cores" = 1 ] || { echo "ember inside a --cpus 1 container counts $cores cores" >&2; return 1; }
  if echo "$workers" | grep -q 'workers [0-9]*[02-9] x\|workers 1[0-9]'; then
    echo "a model was sized more than one worker on one CPU: $workers" >&2
    return 1
  fi
  [ "$memory" = "1.0 GiB" ] || { echo "ember inside a --memory 1g container sees a limit of '$memory'" >&2; return 1; }
  [ "$rc" = 0 ] || { echo "docker stop: ember exited with status $rc" >&2; return 1; }
}
