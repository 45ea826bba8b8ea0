"""Link types the plugin attaches, one module each: its configuration parsed into a typed value,
and one :class:`Handler` with ``add``, ``delete``, ``check`` and ``gc``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Generic, TypeVar

from cni.context import Context
from cni.protocol import CniRequest
from nodeagent.cnitypes.result import Result

Conf = TypeVar("Conf")


class Handler(ABC, Generic[Conf]):
    """The verbs of one link type over its typed configuration ``Conf``. ``parse`` raises
    CniError code 7 naming the field; DEL and GC never need a valid configuration (a runtime
    must be able to clean up after any ADD)."""

    kind: str

    @abstractmethod
    def parse(self, request: CniRequest) -> Conf: ...

    @abstractmethod
    def add(self, ctx: Context, request: CniRequest) -> Result: ...

    @abstractmethod
    def delete(self, ctx: Context, request: CniRequest) -> None: ...

    @abstractmethod
    def check(self, ctx: Context, request: CniRequest) -> None: ...

    @abstractmethod
    def gc(self, ctx: Context, request: CniRequest) -> None: ...


class FunctionHandler(Handler[Conf]):
    """A kind whose verbs are its module's functions: ``parse(request)``,
    ``add(ctx, request, conf)``, ``delete(ctx, request)``, ``check(ctx, request, conf)`` and
    ``gc(ctx, request)``; ADD and CHECK parse the configuration first."""

    def __init__(self, kind: str, parse: Callable[[CniRequest], Conf],
                 add: Callable[[Context, CniRequest, Conf], Result],
                 delete: Callable[[Context, CniRequest], None],
                 check: Callable[[Context, CniRequest, Conf], None],
                 gc: Callable[[Context, CniRequest], None]) -> None:
        self.kind = kind
        self._parse, self._add, self._delete = parse, add, delete
        self._check, self._gc = check, gc

    def parse(self, request: CniRequest) -> Conf:
        return self._parse(request)

    def add(self, ctx: Context, request: CniRequest) -> Result:
        return self._add(ctx, request, self.parse(request))

    def delete(self, ctx: Context, request: CniRequest) -> None:
        self._delete(ctx, request)

    def check(self, ctx: Context, request: CniRequest) -> None:
        self._check(ctx, request, self.parse(request))

    def gc(self, ctx: Context, request: CniRequest) -> None:
        self._gc(ctx, request)
