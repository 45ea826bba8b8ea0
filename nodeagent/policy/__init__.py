"""MultiNetworkPolicy enforcement: the policy model, its compilation to nftables, and applying
it inside a pod's network namespace (docs/policy.md). The Kubernetes side (watches, the
attachment registry) lives in :mod:`nodeagent.policy.sync` and feeds these pure functions.
"""
