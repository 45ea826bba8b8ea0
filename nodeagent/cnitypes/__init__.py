"""CNI spec types (errors, results) shared by the plugin (``cni``) and the library (IPAM)."""
