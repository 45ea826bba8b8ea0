"""The in-process CNI plugin, for when the agent daemon is unreachable.

The shim executes this with its environment and stdin untouched (docs/cni-socket.md); it runs
the same handlers over the same on-disk state, only with a Python start-up per call.
"""

from __future__ import annotations

import logging
import os
import sys

from cni.context import Context
from cni.dispatch import handle
from nodeagent import logs


def main() -> int:
    handler = logging.StreamHandler(sys.stderr)  # with the request's pod, network, device
    handler.setFormatter(logs.TextFormatter("nodeagent-cni-fallback: %(message)s"))
    handler.addFilter(logs.ContextFilter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    context = Context()
    try:
        plugin = os.environ.get("NODEAGENT_CNI_PLUGIN", "")  # set by the shim
        response = handle(context, os.environ, sys.stdin.buffer.read(), plugin)
    finally:
        context.close()
    sys.stdout.buffer.write(response.stdout)
    sys.stdout.flush()
    return response.exit_status


if __name__ == "__main__":
    sys.exit(main())
