"""The agent's Kubernetes side: the node's NodeNetworkState resource, Events on the Node, and the
pods on the node (for IPAM garbage collection). Nothing here may block the data plane: every
call has short timeouts and failures back off in the background."""

from nodeagent import lazyinit as _lazyinit

# urllib3 (the API client's transport) imports its HTTP/2 support, which imports
# importlib.metadata and zipfile to check the h2 version; HTTP/1.1 connections use only its
# probe module (docs/observability.md, "Memory").
_lazyinit.defer("urllib3.http2")
