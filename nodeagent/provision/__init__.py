"""VF provisioning: a node policy, the decisions it implies, and the reconciler applying them."""
