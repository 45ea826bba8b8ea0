"""``sbr``, the reference source-based routing plugin as a chained plugin: after the plugin
that made the interface, it gives the interface's addresses their own routing table and a
``from ADDRESS`` rule (cni.sbr has the meaning, shared with the ``sbr`` option of this
project's kinds). Fields as the reference's: ``table``, ``gateways``, ``addSourceHints``.
ADD passes prevResult through unchanged.
"""

from __future__ import annotations

from cni import sbr
from cni.context import Context, Netlink
from cni.kinds import Handler
from cni.protocol import CniRequest
from nodeagent.cnitypes.errors import INVALID_CONFIG, IO_FAILURE, CniError
from nodeagent.cnitypes.result import Result


def _prev_result(request: CniRequest) -> Result:
    if request.prev_result is None:
        raise CniError(INVALID_CONFIG, "sbr is a chained plugin: the configuration has no"
                       " prevResult", "put it after the plugin that creates the interface")
    return request.prev_result


def _index(pod: Netlink, request: CniRequest) -> int:
    index = pod.link_index(request.ifname)
    if index is None:
        raise CniError(IO_FAILURE, f"sbr: {request.ifname} does not exist in {request.netns}")
    return index


class SbrHandler(Handler[sbr.SbrConf]):
    kind = "sbr"

    def parse(self, request: CniRequest) -> sbr.SbrConf:
        return sbr.parse(request.config)

    def add(self, ctx: Context, request: CniRequest) -> Result:
        conf = self.parse(request)
        prev = _prev_result(request)
        with ctx.pod(request.netns) as pod:
            sbr.apply(pod, request.ifname, _index(pod, request), prev, conf)
        return prev

    def delete(self, ctx: Context, request: CniRequest) -> None:
        """Idempotent; a gone namespace or interface leaves nothing to do (the reference's
        meaning), a configuration it cannot read removes the rules from every table."""
        if not request.netns:
            return
        try:
            conf = self.parse(request)
        except CniError:
            conf = sbr.SbrConf()
        with ctx.pod(request.netns) as pod:
            sbr.remove(pod, request.ifname, conf, request.prev_result)

    def check(self, ctx: Context, request: CniRequest) -> None:
        conf = self.parse(request)
        prev = _prev_result(request)
        with ctx.pod(request.netns) as pod:
            sbr.verify(pod, request.ifname, _index(pod, request), prev, conf)

    def gc(self, ctx: Context, request: CniRequest) -> None:
        """Rules and tables live in the pod's namespace and die with it: nothing to collect."""


HANDLER = SbrHandler()
