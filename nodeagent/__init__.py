"""nodeagent: the node-level data plane for Kubernetes secondary networks."""

from nodeagent import lazyinit as _lazyinit

__version__ = "0.1.0"

# Before any of our modules imports them: the agent uses a few modules of each, not the
# libraries' whole (nodeagent/lazyinit.py, docs/observability.md "Memory").
_lazyinit.defer("pyroute2", "kubernetes", "kubernetes.config", "kubernetes.utils", "html",
                "yaml")
# protobuf's pure-Python messages: imported by every generated module, used only without upb.
_lazyinit.lazy("google.protobuf.internal.python_message")
