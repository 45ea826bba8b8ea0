"""Import a library's modules without everything its package ``__init__`` imports.

Some packages import their whole library in ``__init__``: pyroute2's brings in every protocol
it speaks (NDB, IPDB, ipset, nl80211, plan9...: 160 modules, 8 MiB resident), kubernetes' its
dynamic client, websocket streams, leader election, informers and kubernetes_validate with
jsonschema (4 MiB), and ``kubernetes.config`` the kubeconfig loader with requests and oauthlib
(6 MiB) that an agent running in-cluster never uses. The agent imports the modules it needs by
their full names (``pyroute2.netlink.rtnl.ifinfmsg``, ``kubernetes.client.api_client``).

:func:`defer` registers such a package so that importing one of its submodules loads that
submodule (and what it imports) only. The package's ``__init__`` still runs, in full, the first
time a name that is neither set nor a submodule is looked up on it (a submodule is imported
alone), so ``from pyroute2 import IPRoute`` or ``kubernetes.__version__`` keep working
wherever they are used.

:func:`lazy` goes further for a module that is imported but whose names the agent never uses
(protobuf's pure-Python message implementation, which ``descriptor_pool`` and ``builder``
import even when the compiled one serves): it is loaded on the first lookup of any of its names.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import threading
import types

_lock = threading.RLock()
_running: set[str] = set()  # packages whose __init__ is running now


class _Deferred(types.ModuleType):
    """A package whose ``__init__`` has not run yet; the first missing name runs it."""

    def __getattr__(self, name: str) -> object:
        # Other threads wait here while the first one runs __init__; the __init__'s own
        # lookups of names it has not set yet (the same thread: the lock is reentrant) fail
        # as they would in any module being imported.
        if importlib.util.find_spec(f"{self.__name__}.{name}") is not None:
            return importlib.import_module(f"{self.__name__}.{name}")  # a submodule: only it
        with _lock:
            if type(self) is _Deferred and self.__name__ not in _running:
                _running.add(self.__name__)
                try:
                    spec = self.__spec__
                    assert spec is not None and spec.loader is not None
                    spec.loader.exec_module(self)
                finally:
                    _running.discard(self.__name__)
                    self.__class__ = types.ModuleType
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}") from None


def defer(*packages: str) -> None:
    """Defer the ``__init__`` of each package named (parents before their subpackages). A
    package already imported, or not installed, is left as it is. A subpackage's parent that
    is not imported yet is imported right after (its own ``__init__`` then finds the
    subpackage deferred): defer a subpackage where its parent would be imported anyway."""
    for name in packages:
        if name in sys.modules:
            continue
        parent, _, child = name.rpartition(".")
        if parent and parent not in sys.modules:
            outer = importlib.util.find_spec(parent)
            places = outer.submodule_search_locations if outer is not None else None
            spec = importlib.machinery.PathFinder.find_spec(name, places) if places else None
        else:
            spec = importlib.util.find_spec(name)  # the parent is imported (or deferred)
        if spec is None or spec.loader is None or spec.submodule_search_locations is None:
            continue
        module = importlib.util.module_from_spec(spec)
        module.__class__ = _Deferred
        sys.modules[name] = module
        if parent:
            setattr(importlib.import_module(parent), child, module)


def deferred(name: str) -> bool:
    """Whether package ``name`` is imported with its ``__init__`` not run yet."""
    return type(sys.modules.get(name)) is _Deferred


def lazy(*modules: str) -> None:
    """Load each module named when one of its names is first looked up, not when it is
    imported. A module already imported, or not installed, is left as it is."""
    for name in modules:
        if name in sys.modules:
            continue
        try:
            spec = importlib.util.find_spec(name)  # imports the parents
        except ModuleNotFoundError:
            continue
        if spec is None or spec.loader is None or name in sys.modules:
            continue
        spec.loader = importlib.util.LazyLoader(spec.loader)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)  # only arms the loading
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
