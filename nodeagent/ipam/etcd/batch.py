"""Group commit for etcd transactions: concurrent claims of one agent share a round trip.

Each claim is a small transaction of its own. When several threads of an agent claim at once,
the first one sends its transaction at once; those arriving while it is in flight queue up,
and when it returns, one of them sends every queued transaction as the nested transactions of
one etcd transaction (etcd >= 3.3 evaluates each nested compare on its own, so each claim
still succeeds or fails alone). Nobody waits for a timer: a lone claim goes out immediately,
and under load the per-call cost of gRPC in Python is paid once per batch instead of once per
claim. Two claims that write the same key never share a batch (etcd refuses duplicate keys
in one transaction), so the later one simply waits for the next batch.

Up to MAX_IN_FLIGHT batches are in flight at once (with one at a time, a burst had every
request wait for the batch in flight before its own went; measured against one at a time
again once a DEL took a single round trip: no difference within the noise). Their
order does not matter: each transaction's compares decide its outcome in etcd, as they do
between agents of different nodes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nodeagent.ipam.etcd import api as pb

MAX_BATCH = 32  # nested transactions per etcd transaction (etcd allows 128 ops per level)
MAX_IN_FLIGHT = 2


@dataclass(eq=False)  # identity: two equal requests are still two claims
class _Pending:
    request: Any  # TxnRequest
    keys: frozenset[bytes]  # keys the transaction writes
    taken: bool = False  # in a batch some leader runs
    done: bool = False
    result: Any = None  # TxnResponse
    error: BaseException | None = None


Send = Callable[[Any], Any]  # TxnRequest -> TxnResponse


class Batcher:
    def __init__(self, send: Send) -> None:
        """``send(request)`` runs one etcd transaction (TxnRequest -> TxnResponse)."""
        self._send = send
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._in_flight = 0

    def txn(self, request: Any, writes: frozenset[bytes]) -> Any:
        """Run one TxnRequest, alone or in a batch; its TxnResponse as if it ran alone (the
        header's revision is the batch's, which is the revision of everything it wrote)."""
        mine = _Pending(request, writes)
        with self._cond:
            self._queue.append(mine)
            while not mine.done and (mine.taken or self._in_flight >= MAX_IN_FLIGHT):
                self._cond.wait()
            leader = not mine.done
            if leader:
                self._in_flight += 1
                batch = self._take(mine)
        if leader:
            self._run(batch)
        if mine.error is not None:
            raise mine.error
        assert mine.result is not None
        return mine.result

    def _take(self, mine: _Pending) -> list[_Pending]:
        """The leader's batch: its own transaction first, then queued ones without a shared key."""
        batch, written = [mine], set(mine.keys)
        mine.taken = True
        self._queue.remove(mine)
        for p in list(self._queue):
            if len(batch) >= MAX_BATCH:
                break
            if written.isdisjoint(p.keys):
                batch.append(p)
                p.taken = True
                written |= p.keys
                self._queue.remove(p)
        return batch

    def _run(self, batch: list[_Pending]) -> None:
        try:
            if len(batch) == 1:
                (p,) = batch
                p.result = self._send(p.request)
            else:
                request = pb.txn()
                for p in batch:  # one copy of each (a RequestOp built first is copied again)
                    request.success.add().request_txn.CopyFrom(p.request)
                resp = self._send(request)
                for p, op in zip(batch, resp.responses, strict=True):
                    p.result = op.response_txn
                    p.result.header.revision = resp.header.revision
        except BaseException as exc:
            for p in batch:
                p.error = exc
        finally:
            with self._cond:
                for p in batch:
                    p.done = True
                self._in_flight -= 1
                self._cond.notify_all()
