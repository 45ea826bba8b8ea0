"""VXLAN overlays across nodes: who the members of each network are (the cluster store), the
forwarding entries that send a network's flooded frames to them, and the service that keeps
both current. docs/vxlan.md has the design."""
