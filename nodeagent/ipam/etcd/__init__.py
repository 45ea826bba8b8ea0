"""The cluster-wide IPAM store on etcd: the gRPC API (``api``), a client with failover and auth
(``client``), batched transactions (``batch``) and the store itself (``store``)."""
