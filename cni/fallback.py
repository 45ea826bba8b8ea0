"""The in-process CNI plugin, for when the agent daemon is unreachable.

The shim executes this with its environment and stdin untouched (docs/cni-socket.md); it runs
the same handlers over the same on-disk state, only with a Python start-up per call. It reads
the agent's settings as the agent does (nodeagent.settings.for_fallback): the same state
directories and the same cluster store.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from cni.context import Context
from cni.dispatch import handle
from nodeagent import logs
from nodeagent import settings as agent_settings
from nodeagent.cnitypes.errors import INVALID_CONFIG, CniError
from nodeagent.policy.attachments import AttachmentRegistry
from nodeagent.policy.sync import OfflineHook
from nodeagent.vfstate import VfState


def main() -> int:
    handler = logging.StreamHandler(sys.stderr)  # with the request's pod, network, device
    handler.setFormatter(logs.TextFormatter("nodeagent-cni-fallback: %(message)s"))
    handler.addFilter(logs.ContextFilter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    stdin = sys.stdin.buffer.read()
    try:
        settings = agent_settings.for_fallback(os.environ, agent_settings.agent_socket(stdin))
    except agent_settings.SettingsError as exc:  # never guess where the state is
        error = CniError(INVALID_CONFIG, f"the agent's settings are unusable: {exc}")
        sys.stdout.write(json.dumps(error.to_dict(agent_settings.cni_version(stdin))))
        return 1
    context = Context(ipam=agent_settings.ipam_for(settings), vfs=VfState(settings.state_dir),
                      attachments=OfflineHook(AttachmentRegistry(settings.state_dir)))
    try:
        plugin = os.environ.get("NODEAGENT_CNI_PLUGIN", "")  # set by the shim
        response = handle(context, os.environ, stdin, plugin)
    finally:
        context.close()
    sys.stdout.buffer.write(response.stdout)
    sys.stdout.flush()
    return response.exit_status


if __name__ == "__main__":
    sys.exit(main())
