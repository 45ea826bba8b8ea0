"""nodeagent: the node-level data plane for Kubernetes secondary networks."""

__version__ = "0.1.0"
