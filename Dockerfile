# nodeagent image: the agent (entrypoint `nodeagent`), the CNI shim and the cffi modules.
#   docker build -t nodeagent:0.1.0 .
# Without a registry: `make image` (podman, a local Debian base as PYTHON_IMAGE; docs/deploy.md).
#
# The build stage installs the locked, hash-checked dependencies (requirements/*.txt) and
# compiles the native code (cffi modules, device plugin stubs and the shim) into a wheel and a
# virtualenv; the runtime stage gets that virtualenv (no pip, no setuptools) and no compiler.
#
# pip reads two optional build secrets: `pipconf` (a pip configuration: package index, proxy)
# and `cacert` (a CA bundle the configuration may name as /run/secrets/cacert), e.g.
#   docker build --secret id=pipconf,src=pip.conf --secret id=cacert,src=ca.crt .
# Without them pip uses PyPI and its own CA bundle. Secrets are never stored in a layer.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
ENV PIP_CONFIG_FILE=/run/secrets/pipconf \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The build tools (setuptools, cffi, grpcio-tools) in a virtualenv of their own, then the
# runtime dependencies into the agent's virtualenv, made without pip: every file hash-checked.
# The kubernetes package's asyncio client goes, with what only it uses (aiohttp and its
# dependencies: AIO_ONLY, 80 MB together): the agent uses the synchronous client
# (tests/unit/test_lock.py checks the list against the lock and that nothing imports them).
ARG AIO_ONLY="aiohttp aiohttp-retry aiohappyeyeballs aiosignal attrs frozenlist multidict propcache yarl"
COPY requirements/build.txt requirements/runtime.txt requirements/
RUN --mount=type=secret,id=pipconf --mount=type=secret,id=cacert \
    python -m venv /opt/build \
 && /opt/build/bin/python -m pip install --require-hashes -r requirements/build.txt \
 && python -m venv --without-pip /opt/nodeagent \
 && /opt/build/bin/python -m pip --python /opt/nodeagent/bin/python install \
        --require-hashes --only-binary :all: -r requirements/runtime.txt \
 && /opt/build/bin/python -m pip --python /opt/nodeagent/bin/python uninstall -y -q $AIO_ONLY \
 && rm -rf /opt/nodeagent/lib/python3.*/site-packages/kubernetes/aio
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY native/ native/
COPY nodeagent/ nodeagent/
COPY cni/ cni/
COPY deviceplugin/ deviceplugin/
RUN /opt/build/bin/python -m pip wheel --no-deps --no-build-isolation --wheel-dir /dist . \
 && /opt/build/bin/python -m pip --python /opt/nodeagent/bin/python install --no-deps \
        --no-index /dist/nodeagent-*.whl
# The shim runs on the host, not in this image: link it statically so it runs whatever the
# host's C library is (same flags and source digest as setup.py's build). `python -P`: the
# installed package, not the sources in this directory.
RUN digest="$(sha256sum native/cni_shim.c | cut -d' ' -f1)" \
 && shim="$(/opt/nodeagent/bin/python -P -c 'from cni.shim import shim_path; print(shim_path())')" \
 && gcc -std=c11 -O2 -Wall -Wextra -Werror -static -s \
        -DNODEAGENT_SHIM_SOURCE="\"$digest\"" -o "$shim" native/cni_shim.c \
 && /opt/nodeagent/bin/python -P -c 'from cni.shim import shim_path; shim_path()'

FROM ${PYTHON_IMAGE} AS runtime
# libudev1: pyudev (udev events); iproute2: `ip` for looking around in the pod;
# libnftables1: MultiNetworkPolicy rules (nodeagent/policy/nft.py).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iproute2 libudev1 \
    libnftables1 \
 && rm -rf /var/lib/apt/lists/* /var/cache/debconf/*-old /var/lib/dpkg/*-old /var/log/apt \
           /var/log/dpkg.log
COPY --from=build /opt/nodeagent /opt/nodeagent
ENV PATH=/opt/nodeagent/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Fail the build, not the node, when a module or the shim is missing.
RUN nodeagent --version \
 && python -c 'import nodeagent._bitmap, nodeagent.k8s.client, deviceplugin.api as a; a.modules()' \
 && nodeagent cni install --dest /tmp/cni-check && rm -rf /tmp/cni-check
ENTRYPOINT ["nodeagent"]
CMD ["daemon"]
