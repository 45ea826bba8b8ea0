"""The agent's Kubernetes side: the node's NodeNetworkState resource, Events on the Node, and the
pods on the node (for IPAM garbage collection). Nothing here may block the data plane: every
call has short timeouts and failures back off in the background."""
