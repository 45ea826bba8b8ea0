# nodeagent image: the agent (entrypoint `nodeagent`), the CNI shim and the cffi modules.
#   docker build -t nodeagent:0.1.0 .
# The build stage compiles the native code (cffi modules, device plugin stubs and the shim)
# into a wheel and a virtualenv; the runtime stage gets that virtualenv and no compiler.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY native/ native/
COPY nodeagent/ nodeagent/
COPY cni/ cni/
COPY deviceplugin/ deviceplugin/
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
 && python -m venv /opt/nodeagent \
 && /opt/nodeagent/bin/pip install --no-cache-dir /dist/nodeagent-*.whl
# The shim runs on the host, not in this image: link it statically so it runs whatever the
# host's C library is (same flags and source digest as setup.py's build). `python -P`: the
# installed package, not the sources in this directory.
RUN digest="$(sha256sum native/cni_shim.c | cut -d' ' -f1)" \
 && shim="$(/opt/nodeagent/bin/python -P -c 'from cni.shim import shim_path; print(shim_path())')" \
 && gcc -std=c11 -O2 -Wall -Wextra -Werror -static -s \
        -DNODEAGENT_SHIM_SOURCE="\"$digest\"" -o "$shim" native/cni_shim.c \
 && /opt/nodeagent/bin/python -P -c 'from cni.shim import shim_path; shim_path()'

FROM ${PYTHON_IMAGE} AS runtime
# libudev1: pyudev (udev events); iproute2: `ip` for looking around in the pod.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iproute2 libudev1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/nodeagent /opt/nodeagent
ENV PATH=/opt/nodeagent/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Fail the build, not the node, when a module or the shim is missing.
RUN nodeagent --version \
 && python -c 'import nodeagent._bitmap, deviceplugin.api as a; a.modules()' \
 && nodeagent cni install --dest /tmp/cni-check && rm -rf /tmp/cni-check
ENTRYPOINT ["nodeagent"]
CMD ["daemon"]
