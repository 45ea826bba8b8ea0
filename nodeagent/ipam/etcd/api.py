"""etcd's v3 gRPC API as the IPAM store uses it: the generated modules and request builders.

The messages and services come from ``proto/etcd_rpc.proto`` and ``proto/etcd_kv.proto`` (the
subset of etcd's ``etcdserverpb`` and ``mvccpb`` that IPAM needs), compiled at build time
(see :mod:`nodeagent.protostubs`). ``rpc`` holds the etcdserverpb messages, ``mvcc`` the
KeyValue, ``services`` the ``KVStub`` and ``AuthStub`` client classes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from nodeagent.protostubs import ProtoStubs

STUBS = ProtoStubs(
    Path(__file__).with_name("proto"), env="NODEAGENT_ETCD_STUBS", cache_name="etcd-api"
)
mvcc, rpc, services = STUBS.load("etcd_kv_pb2", "etcd_rpc_pb2", "etcd_rpc_pb2_grpc")

# Generated classes are built at run time, so type checkers see them as Any.
KeyValue: Any = mvcc.KeyValue
RangeResponse: Any = rpc.RangeResponse
TxnRequest: Any = rpc.TxnRequest
TxnResponse: Any = rpc.TxnResponse
RequestOp: Any = rpc.RequestOp
Compare: Any = rpc.Compare

#: target -> (Compare.CompareTarget, the target_union member that carries the operand)
_TARGETS = {
    "version": (rpc.Compare.VERSION, "version"),
    "create": (rpc.Compare.CREATE, "create_revision"),
    "mod": (rpc.Compare.MOD, "mod_revision"),
    "value": (rpc.Compare.VALUE, "value"),
}


def compare(
    key: bytes,
    target: Literal["version", "create", "mod", "value"],
    operand: int | bytes,
    result: int = rpc.Compare.EQUAL,
) -> Any:
    """``target(key) <result> operand``, e.g. ``compare(k, "create", 0)``: k does not exist."""
    code, member = _TARGETS[target]
    return rpc.Compare(result=result, target=code, key=key, **{member: operand})


def txn(
    compares: Iterable[Any] = (), success: Iterable[Any] = (), failure: Iterable[Any] = ()
) -> Any:
    return rpc.TxnRequest(compare=compares, success=success, failure=failure)


def op_range(key: bytes, range_end: bytes = b"", *, keys_only: bool = False) -> Any:
    return rpc.RequestOp(
        request_range=rpc.RangeRequest(key=key, range_end=range_end, keys_only=keys_only)
    )


def op_put(key: bytes, value: bytes) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value))


def op_delete(key: bytes, range_end: bytes = b"") -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=range_end))


def op_txn(request: Any) -> Any:
    return rpc.RequestOp(request_txn=request)
