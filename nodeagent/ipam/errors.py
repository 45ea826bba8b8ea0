"""IPAM errors: CNI errors (nodeagent.cnitypes.errors) raised by the IPAM library, plus two
plugin codes.

The spec leaves codes 100 and up to plugins; IPAM uses two of them for outcomes a runtime or
operator must tell apart from bad configuration.
"""

from __future__ import annotations

from nodeagent.cnitypes.errors import (  # noqa: F401  (re-exported for the IPAM modules)
    DECODE_FAILURE,
    INCOMPATIBLE_VERSION,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    IO_FAILURE,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
    UNSUPPORTED_FIELD,
    CniError,
)

#: Plugin-specific: every address of the pool (range set) is taken; nothing was reserved.
POOL_EXHAUSTED = 100
#: Plugin-specific: a fixed (requested) address is already held by another attachment.
ADDRESS_IN_USE = 101


class IpamError(CniError):
    """An IPAM failure, reported to the runtime as CNI error JSON (``to_dict``)."""

    def __repr__(self) -> str:
        return f"IpamError(code={self.code}, msg={self.msg!r})"


def config_error(field: str, problem: str) -> IpamError:
    """Invalid network configuration (code 7), naming the offending field by its JSON path."""
    return IpamError(INVALID_CONFIG, f"invalid IPAM configuration: {field}: {problem}")


def env_error(name: str, problem: str) -> IpamError:
    """Invalid CNI environment (code 4): CNI_CONTAINERID, CNI_IFNAME, CNI_ARGS."""
    return IpamError(INVALID_ENVIRONMENT, f"invalid {name}: {problem}")


def unavailable(what: str, details: str = "") -> IpamError:
    """The datastore cannot be reached now (code 11); nothing was reserved."""
    return IpamError(TRY_AGAIN_LATER, f"{what} unavailable, try again later", details)
