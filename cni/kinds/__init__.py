"""Link types the plugin attaches, one module each: its configuration parsed into a typed value,
and one :class:`Handler` with ``add``, ``delete``, ``check`` and ``gc``."""

from __future__ import annotations

from abc import ABC, abstractmethod
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
