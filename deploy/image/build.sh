#!/usr/bin/env bash
# `make image`: build the agent's image with podman where no container registry is reachable.
#
# The Dockerfile is the same one `docker build` uses; only its base changes: a Debian bookworm
# made here with debootstrap from the Debian archive this host's apt uses, imported as a local
# image and passed as PYTHON_IMAGE. The host's pip configuration and CA bundle reach pip inside
# the build as build secrets (nothing host-specific is written into the image or the repo).
#
# Environment (all optional):
#   IMAGE          tag of the result (default nodeagent:<version from pyproject.toml>)
#   BASE_IMAGE     the local base (default localhost/python:3.11-slim-bookworm); made once,
#                  reused while it exists (`podman rmi` it to make it again)
#   DEBIAN_MIRROR  the Debian archive (default: the first URI of this host's debian.sources)
#   WORK_DIR       scratch space (default build/image)
set -euo pipefail
cd "$(dirname "$0")/../.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n1)
IMAGE=${IMAGE:-nodeagent:$version}
BASE_IMAGE=${BASE_IMAGE:-localhost/python:3.11-slim-bookworm}
WORK_DIR=${WORK_DIR:-build/image}
mkdir -p "$WORK_DIR"
WORK_DIR=$(realpath "$WORK_DIR")

# podman as it works on this kind of host: runc (crun 1.8 fails on its cgroup layout), cgroupfs,
# no default ulimits above what the host allows. A config of our own, the host's is untouched.
cat >"$WORK_DIR/containers.conf" <<'EOF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF="$WORK_DIR/containers.conf"

debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local src=/etc/apt/sources.list.d/debian.sources uri
  if [ -r "$src" ]; then
    uri=$(awk 'tolower($1)=="uris:" {print $2; exit}' "$src")
  elif [ -r /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" && $3 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
  fi
  [ -n "${uri:-}" ] || { echo "no Debian archive found; set DEBIAN_MIRROR" >&2; exit 1; }
  echo "$uri"
}

make_base() {
  local root="$WORK_DIR/rootfs" mirror
  mirror=$(debian_mirror)
  echo "== base $BASE_IMAGE: debootstrap bookworm from $mirror"
  rm -rf "$root"
  debootstrap --variant=minbase bookworm "$root" "$mirror"
  # Like the slim images: no documentation, manual pages or translations.
  cat >"$root/etc/dpkg/dpkg.cfg.d/01-nodoc" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    >"$root/etc/apt/apt.conf.d/01-norecommends"
  # As Debian's container images: apt keeps no package caches (80 MB after an update).
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  # debootstrap's own packages came in before the exclusions above.
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/*
  find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  # Python with venv (the build stage's virtualenvs), no system pip; Python's headers from
  # libpython3.11-dev's files alone, as the slim image has them (the package itself would pull
  # in libc6-dev and the static library: the build stage installs its compiler itself).
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
    sh -euc 'apt-get update -qq
             apt-get install -y -qq python3 python3-venv python-is-python3 ca-certificates \
               >/dev/null
             cd /tmp && apt-get download -qq libpython3.11-dev
             dpkg-deb --fsys-tarfile libpython3.11-dev_*.deb | tar -C / -x ./usr/include
             rm -f libpython3.11-dev_*.deb
             apt-get clean
             rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/debconf/*-old \
                    /var/lib/dpkg/*-old /var/log/*'
  # debootstrap leaves the host's resolver configuration in; the runtime provides its own.
  : >"$root/etc/resolv.conf"
  tar -C "$root" --numeric-owner -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_IMAGE"
  rm -rf "$root"
}

podman image exists "$BASE_IMAGE" || make_base

# pip inside the build: this host's configuration and CA bundle, as secrets (mounted only into
# the RUN steps that install Python packages, never stored in a layer).
secrets=()
# The package-index settings of this host's pip configuration (pip's own files and PIP_*
# variables, as `pip config list` shows them): index URLs, trusted hosts, proxy, timeouts. Local
# paths (find-links directories, file:// indexes, constraint files) do not exist in the build
# and are left out; the CA bundle is a secret of its own, named by the written file.
ca=${PIP_CERT:-${SSL_CERT_FILE:-${REQUESTS_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}}}
[ -r "$ca" ] && secrets+=(--secret "id=cacert,src=$ca")
python3 -m pip config list 2>/dev/null | HAVE_CA=$([ -r "$ca" ] && echo 1) python3 -c '
import ast, os, sys
keep = {"index-url", "extra-index-url", "trusted-host", "proxy", "timeout", "default-timeout",
        "retries"}
out = {}
for line in sys.stdin:
    key, _, value = line.rstrip("\n").partition("=")
    name = key.rsplit(".", 1)[-1].replace("_", "-")
    if name not in keep or not value:
        continue
    words = [w for w in ast.literal_eval(value).split() if not w.startswith("file:")]
    if words:
        out[name] = " ".join(words)
if os.environ.get("HAVE_CA"):
    out["cert"] = "/run/secrets/cacert"
print("[global]")
for name, value in out.items():
    print(f"{name} = {value}")
' >"$WORK_DIR/pip.conf"
secrets+=(--secret "id=pipconf,src=$WORK_DIR/pip.conf")

echo "== image $IMAGE on $BASE_IMAGE"
start=$(date +%s)
podman build --network=host --build-arg "PYTHON_IMAGE=$BASE_IMAGE" "${secrets[@]}" \
  -t "$IMAGE" .
echo "== built $IMAGE in $(( $(date +%s) - start )) s, $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes"
