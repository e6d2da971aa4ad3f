#!/usr/bin/env bash
# Builds the container image from the committed Dockerfile with podman, without a Docker engine and without
# pulling anything, then checks it by running its filesystem (`make image`; not part of `make test`):
#
#   1. podman and debootstrap, installed from Debian when missing (as root, like the Makefile's other tools);
#   2. the Dockerfile's base image, debian:bookworm-slim: the one podman has (pulled, or made by an earlier run),
#      else made here once, since registries may be out of reach and the build pulls nothing:
#      `debootstrap --variant=minbase bookworm`, upgraded from bookworm-updates and -security, trimmed as the
#      official slim images are (no docs, man pages or locales), imported as localhost/debian:bookworm-slim, which
#      the Dockerfile's short name then resolves to;
#   3. the dist folder: `make dist DIST_TARBALL=no` (`make dist-cuda ...` for cuda), or EMBER_DIST;
#   4. the image: the Dockerfile's cpu-prebuilt (cuda-prebuilt) stage with the dist folder as the build context,
#      `podman build --isolation=chroot`, tagged ember:<version> (ember:<version>-cuda);
#   5. the check, with nothing but the image's files and configuration: its root filesystem, mounted read-only,
#      becomes the root (chroot) of `ember serve` started as the image's user (10001:10001) in the image's working
#      directory with exactly the image's environment (EMBER_HOST, EMBER_PORT, EMBER_MODEL_REPO=/models, ...) and
#      entrypoint, in a network namespace of its own (so the image's port 8080 is free). It waits for
#      /health/ready, runs the image's HEALTHCHECK command inside the image, classifies a photo over REST and two
#      iris flowers over gRPC (port 8081, with the venv's tritonclient[grpc]), runs
#      `ember info`, then stops the server with SIGTERM, which must exit 0. /proc, /sys, /dev and a /tmp tmpfs are
#      mounted over the image's empty folders, as a container runtime would; nothing is written into the image;
#   6. the image in a real container (deploy/docker.sh): Debian's dockerd (started if none runs, stopped after;
#      host networking only), the image copied from podman's store, run read-only as UID 10001 with no
#      capabilities, --cpus 1 --memory 1g: it must turn healthy by its own HEALTHCHECK, `ember info` inside must
#      count one core (one worker per model), and `docker stop` must exit 0.
#
#   deploy/image.sh [cpu|cuda]
# Environment: EMBER_DIST (a dist folder made already: skips make), EMBER_IMAGE (the tag, default
# localhost/ember:<version>[-cuda]), EMBER_DEBIAN_MIRROR (for debootstrap, default http://deb.debian.org/debian),
# EMBER_CHECK_PHOTO (default tests/data/images/china.jpg), EMBER_CHECK_LABEL (its expected top label, default palace).
# Prints the image's size and the check's results, and writes them to dist/image-<variant>.txt.
# The images live in podman's store (/var/lib/containers/storage); `podman rmi ember:<version>` removes one.
set -euo pipefail

variant=${1:-cpu}
case $variant in cpu | cuda) ;; *) echo "usage: deploy/image.sh [cpu|cuda]" >&2; exit 1 ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ "$(id -u)" = 0 ] || { echo "deploy/image.sh runs as root (podman's store, debootstrap, chroot)" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
suffix=$([ "$variant" = cuda ] && echo "-cuda" || true)
image=${EMBER_IMAGE:-localhost/ember:$version$suffix}
base=debian:bookworm-slim
mirror=${EMBER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
photo=${EMBER_CHECK_PHOTO:-$root/tests/data/images/china.jpg}
expect=${EMBER_CHECK_LABEL:-palace}
report=$root/dist/image-$variant.txt

log() { echo "== $*"; }
mb() { awk -v b="$1" 'BEGIN { printf "%.0f MB", b / 1e6 }'; }

# --- 1. tools ----------------------------------------------------------------------------------------------------
missing=""
for pair in podman:podman debootstrap:debootstrap curl:curl ip:iproute2; do
  command -v "${pair%%:*}" >/dev/null || missing="$missing ${pair#*:}"
done
if [ -n "$missing" ]; then
  echo "installing$missing from Debian (needed to build and check the image)"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing
fi

# Room for the dist folder, the build's copy and the stored layers (the CUDA libraries are 3.5 GB).
need_gb=$([ "$variant" = cuda ] && echo 16 || echo 4)
free_gb=$(df -P -BG "$root" /var/lib | awk 'NR > 1 { sub("G", "", $4); if (min == "" || $4 < min) min = $4 } END { print min }')
if [ "$free_gb" -lt "$need_gb" ]; then
  echo "the $variant image needs about $need_gb GB of free disk, $free_gb GB are free" >&2
  exit 1
fi

# --- 2. the base image -------------------------------------------------------------------------------------------
if podman image exists "$base"; then
  log "base image $base: present, $(podman image inspect --format '{{join .RepoTags " "}}' "$base")" \
    "($(mb "$(podman image inspect --format '{{.Size}}' "$base")"))"
else
  log "base image $base: none; debootstrap --variant=minbase bookworm from $mirror"
  work=$(mktemp -d "${TMPDIR:-/var/tmp}/ember-base.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  rootfs=$work/rootfs
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
  # The sources of the official image (deb822, with updates and security), then the security upgrades.
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # The slim variant's dpkg filter (as debuerreotype writes it), so that what is installed later stays slim too.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
  # In a mount namespace of its own, so that /proc goes away with it whatever happens.
  unshare --mount --propagation private sh -c '
    mount -t proc proc "$1/proc"
    chroot "$1" env DEBIAN_FRONTEND=noninteractive sh -c "apt-get update -qq && apt-get upgrade -y -qq && apt-get clean"
  ' sh "$rootfs" >"$work/upgrade.log" 2>&1 || { tail -n 30 "$work/upgrade.log" >&2; exit 1; }
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "${rootfs:?}"/usr/share/{groff,info,linda,lintian/overrides,locale,man}/* \
    "${rootfs:?}"/var/lib/apt/lists/* "${rootfs:?}"/var/cache/apt/*.bin "${rootfs:?}"/var/cache/debconf/*-old \
    "${rootfs:?}"/var/log/*.log "${rootfs:?}"/var/log/apt/* \
    "${rootfs:?}"/{dev,proc,sys,tmp,run}/* "${rootfs:?}"/etc/resolv.conf "${rootfs:?}"/etc/hostname
  # Owners as numbers, extended attributes (file capabilities) kept.
  tar --numeric-owner --xattrs --xattrs-include='*' -C "$rootfs" -cf "$work/rootfs.tar" .
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --message "debootstrap --variant=minbase bookworm, trimmed like debian:bookworm-slim (deploy/image.sh)" \
    "$work/rootfs.tar" "localhost/$base" >/dev/null
  rm -rf "$work"
  trap - EXIT
  log "base image $base: imported as localhost/$base ($(mb "$(podman image inspect --format '{{.Size}}' "$base")"))"
fi

# --- 3. the dist folder ------------------------------------------------------------------------------------------
if [ -n "${EMBER_DIST:-}" ]; then
  dist=$(cd "$EMBER_DIST" && pwd)
  log "dist folder: $dist (EMBER_DIST)"
else
  target=$([ "$variant" = cuda ] && echo dist-cuda || echo dist)
  log "dist folder: make $target DIST_TARBALL=no"
  make "$target" DIST_TARBALL=no
  dist=$root/dist/ember-$version-linux-x86_64-$variant
fi
for f in bin/ember lib models README.txt; do
  [ -e "$dist/$f" ] || { echo "$dist has no $f: not a dist folder of deploy/dist.sh" >&2; exit 1; }
done

# --- 4. the image ------------------------------------------------------------------------------------------------
# --format docker keeps the HEALTHCHECK (the OCI image format has no such field); --pull=never: nothing is pulled
# (the base image is the one above); --layers=false: no intermediate images are kept (the build is a few COPYs).
old=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
log "podman build --target $variant-prebuilt -t $image (context: $dist)"
start=$(date +%s)
podman build --isolation=chroot --format docker --pull=never --layers=false \
  --target "$variant-prebuilt" -f "$root/Dockerfile" -t "$image" "$dist"
build_s=$(($(date +%s) - start))
id=$(podman image inspect --format '{{.Id}}' "$image")
# The image this one replaced, if nothing else names it.
if [ -n "$old" ] && [ "$old" != "$id" ] &&
  [ -z "$(podman image inspect --format '{{join .RepoTags ""}}' "$old" 2>/dev/null)" ]; then
  podman rmi --force "$old" >/dev/null 2>&1 || true
fi
size=$(podman image inspect --format '{{.Size}}' "$image")
base_size=$(podman image inspect --format '{{.Size}}' "$base")
dist_size=$(du -sb "$dist" | cut -f1)
log "image $image: $size bytes ($(mb "$size")): base $(mb "$base_size"), dist folder $(mb "$dist_size"); built in ${build_s} s"
podman images --filter "reference=$image"

# --- 5. the check ------------------------------------------------------------------------------------------------
[ -f "$photo" ] || { echo "no photo $photo to classify (make models writes tests/data/images/)" >&2; exit 1; }
# The image's own configuration, one value a line.
cfg() { podman image inspect --format "$1" "$image"; }
user=$(cfg '{{.Config.User}}')
workdir=$(cfg '{{.Config.WorkingDir}}')
mapfile -t envs < <(cfg '{{range .Config.Env}}{{println .}}{{end}}' | sed '/^$/d')
mapfile -t entry < <(cfg '{{range .Config.Entrypoint}}{{println .}}{{end}}' | sed '/^$/d')
mapfile -t cmd < <(cfg '{{range .Config.Cmd}}{{println .}}{{end}}' | sed '/^$/d')
mapfile -t health < <(cfg '{{range .HealthCheck.Test}}{{println .}}{{end}}' | sed '/^$/d')
port=$(printf '%s\n' "${envs[@]}" | sed -n 's/^EMBER_PORT=//p')
[ -n "$user" ] && [ -n "$port" ] && [ ${#entry[@]} -gt 0 ] && [ ${#health[@]} -gt 1 ] ||
  { echo "the image has no user, EMBER_PORT, entrypoint or HEALTHCHECK" >&2; exit 1; }
log "check: ${entry[*]} ${cmd[*]} as $user in $workdir, env: ${envs[*]}"

check() {
  set -euo pipefail
  local mnt=$1 out=$2 photo=$3 port=$4 user=$5 workdir=$6 expect=$7
  shift 7
  local -a envs=() entry=() cmd=() health=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done; shift
  while [ "$1" != -- ]; do entry+=("$1"); shift; done; shift
  while [ "$1" != -- ]; do cmd+=("$1"); shift; done; shift
  health=("$@")

  ip link set lo up
  local fs=$out/root
  mkdir "$fs"
  mount --bind "$mnt" "$fs"
  mount -o remount,bind,ro "$fs"
  mount -t proc proc "$fs/proc"
  mount --rbind /sys "$fs/sys"
  mount -o remount,bind,ro "$fs/sys"
  mount --rbind /dev "$fs/dev"
  mount -t tmpfs -o mode=1777,size=256m tmpfs "$fs/tmp"
  if touch "$fs/.written" 2>/dev/null; then echo "the image's root is writable" >&2; return 1; fi

  local -a as_image=(chroot --userspec="$user" --groups="${user#*:}" "$fs" /usr/bin/env -i -C "$workdir" "${envs[@]}")
  in_image() { "${as_image[@]}" "$@"; }
  # Every library of the dist folder resolves inside the image (the GPU driver, libcuda.so.1, is the host's).
  local home unresolved
  home=$(dirname "$(dirname "${entry[0]}")")
  unresolved=$(in_image sh -c 'for f in "$0"/bin/* "$0"/lib/*.so*; do ldd "$f"; done' "$home" |
    awk '/not found/ && $1 != "libcuda.so.1" { print $1 }' | sort -u | paste -sd ' ')
  if [ -n "$unresolved" ]; then echo "unresolved inside the image: $unresolved"; return 1; fi
  echo "libraries: ldd resolves every dependency of $home/bin and $home/lib" \
    "($(ls "$fs$home/lib" | wc -l) libraries) inside the image"

  local url=http://127.0.0.1:$port start pid code="" t
  start=$(date +%s.%N)
  # chroot and env exec: $! is ember's process.
  "${as_image[@]}" "${entry[@]}" "${cmd[@]}" >"$out/serve.log" 2>&1 &
  pid=$!
  # shellcheck disable=SC2064 # ember's pid, now
  trap "kill -KILL $pid 2>/dev/null || true" EXIT
  for _ in $(seq 1 1200); do
    kill -0 "$pid" 2>/dev/null || { echo "ember serve exited:"; tail -n 30 "$out/serve.log"; return 1; }
    code=$(curl -s -o /dev/null -w '%{http_code}' "$url/health/ready" || true)
    [ "$code" = 200 ] && break
    sleep 0.25
  done
  [ "$code" = 200 ] || { echo "not ready after 300 s:"; tail -n 30 "$out/serve.log"; kill "$pid"; return 1; }
  t=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  echo "ready: /health/ready 200 after $t s"
  echo "process: $(awk '/^Uid:/ { u = $2 } /^Gid:/ { g = $2 } /^Groups:/ { $1 = ""; gs = $0 } /^VmRSS:/ { r = $2 / 1024 }
    END { printf "uid %s, gid %s, groups%s; resident %.0f MiB", u, g, gs, r }' "/proc/$pid/status")"
  # The image's HEALTHCHECK command (CMD ember-probe), run inside the image.
  if in_image "${health[@]:1}"; then
    echo "HEALTHCHECK (${health[0]} ${health[*]:1:2} ...): healthy"
  else
    echo "HEALTHCHECK: unhealthy"; kill "$pid"; return 1
  fi
  echo "models: $(curl -s "$url/v1/models" | grep -o '"name":"[^"]*"' | cut -d'"' -f4 | paste -sd ' ')"
  local answer
  answer=$(curl -s -H 'Content-Type: image/jpeg' --data-binary "@$photo" "$url/v1/classify?top_k=3")
  echo "classify $(basename "$photo"): $answer"
  if ! grep -q "\"predictions\":\[{\"label\":\"$expect\"" <<<"$answer"; then
    echo "expected the top label $expect"; kill "$pid"; return 1
  fi
  # The Open Inference Protocol over gRPC on the image's other port (8081, EXPOSE), with tritonclient[grpc]
  # from the venv the tests use: iris classifies two flowers.
  local species
  species=$("$PWD/.venv/bin/python" -c '
import numpy as np, tritonclient.grpc as grpcclient
client = grpcclient.InferenceServerClient("127.0.0.1:8081")
flowers = grpcclient.InferInput("measurements", [2, 4], "FP32")
flowers.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]], dtype=np.float32))
print(client.infer("iris", [flowers], client_timeout=30).as_numpy("species").tolist())' 2>&1) || true
  echo "gRPC ModelInfer iris on port 8081: $species"
  [ "$species" = "[0, 2]" ] || { echo "expected [0, 2] (setosa, virginica)"; kill "$pid"; return 1; }
  echo "ember info:"
  in_image "${entry[@]}" info | sed 's/^/  /'
  kill -TERM "$pid"
  local rc=0
  wait "$pid" || rc=$?
  echo "SIGTERM: ember serve exited with status $rc; its last words: $(tail -n 1 "$out/serve.log")"
  [ "$rc" = 0 ]
}

out=$(mktemp -d "${TMPDIR:-/tmp}/ember-image-check.XXXXXX")
mnt=$(podman image mount "$image")
source "$root/deploy/docker.sh"
cleanup() { podman image unmount "$image" >/dev/null 2>&1 || true; docker_stop; rm -rf "$out"; }
trap cleanup EXIT
status=0
unshare --mount --net --propagation private bash -c "$(declare -f check); check \"\$@\"" check \
  "$mnt" "$out" "$photo" "$port" "$user" "$workdir" "$expect" \
  "${envs[@]}" -- "${entry[@]}" -- "${cmd[@]}" -- "${health[@]}" | tee "$out/check.txt" || status=$?

# --- 6. the image in a real container ----------------------------------------------------------------------------
# dockerd (started here if none runs, stopped after), the image copied from podman's store: read-only, UID 10001,
# no capabilities, --cpus 1 --memory 1g; healthy by its own HEALTHCHECK, one core and one worker per model in
# `ember info`, `docker stop` exits 0.
if [ $status = 0 ]; then
  log "the image in a container: dockerd"
  # Not in the pipeline below: docker_start records the dockerd it starts, for the cleanup to stop.
  docker_start "$out" || status=1
  if [ $status = 0 ]; then
    { docker_from_podman "$image" && docker_container_check "$image" 18199; } | tee -a "$out/check.txt" || status=1
  fi
fi

mkdir -p "$(dirname "$report")"
{
  echo "image: $image ($id)"
  echo "size: $size bytes ($(mb "$size")); base $base $(mb "$base_size"); dist folder $dist $(mb "$dist_size")"
  echo "built: $(date -u +%Y-%m-%dT%H:%MZ) in ${build_s} s, podman $(podman --version | awk '{print $3}') --isolation=chroot"
  cat "$out/check.txt"
  echo "check: $([ $status = 0 ] && echo passed || echo FAILED)"
} >"$report"
log "check $([ $status = 0 ] && echo passed || echo FAILED); written to $report"
exit $status
