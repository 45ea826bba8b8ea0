"""Typed fields of a decoded configuration: the one helper set every parser uses.

Each parser (CNI network configurations, IPAM, the device plugin's config.json, the node policy)
makes one :class:`Fields` with its own error factory, so its errors keep their type and code,
and names every rejected value by its path (``resourceList[0].selectors.pfNames``). The rules a
field follows (an integer is never a bool, a PCI ID is four hex digits, ...) live here once.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

#: A PCI vendor or device ID as sysfs and the incumbents spell it: four hex digits, here with
#: an optional ``0x`` (the form ``lspci -n`` users also write). The incumbents compare these
#: as strings, so "86" would match nothing there: refused rather than zero-padded. The one
#: rule for config.json's ``vendors``/``devices`` and the policy's ``vendor``/``deviceID``
#: (the device plugin once zero-padded ``0x86`` where the policy refused it).
PCI_ID = re.compile(r"[0-9a-fA-F]{4}")
MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
#: A PCI function address with its domain, as sysfs names it: 0000:3b:02.1.
PCI_ADDRESS = re.compile(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]")
#: ``"0-3,6"``: indexes and inclusive ranges, comma separated (blanks around numbers allowed).
INDEX_LIST = re.compile(r"\s*\d{1,9}\s*(-\s*\d{1,9}\s*)?(,\s*\d{1,9}\s*(-\s*\d{1,9}\s*)?)*")

_MISSING: Any = object()


def join(where: str, key: str | int) -> str:
    """The path of ``key`` inside ``where``: ``a.b``, ``a[3]``."""
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def kind_of(value: Any) -> str:
    """A JSON type name for messages: object, list, string, number, bool, null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return {dict: "object", list: "list", str: "string"}.get(type(value), type(value).__name__)


class Fields:
    """Typed access to a configuration object; every failure raises ``error(path, problem)``.

    ``fold_case``: keys match case-insensitively (sriov-network-device-plugin's config.json);
    objects must then go through :meth:`obj` first, which lower-cases their keys.
    """

    def __init__(self, error: Callable[[str, str], Exception], *, fold_case: bool = False):
        self._error = error
        self.fold_case = fold_case

    def fail(self, where: str, problem: str) -> NoReturn:
        raise self._error(where, problem)

    def _key(self, key: str) -> str:
        return key.lower() if self.fold_case else key

    def raw(self, obj: Mapping[str, Any], key: str, default: Any = None) -> Any:
        return obj.get(self._key(key), default)

    def has(self, obj: Mapping[str, Any], key: str) -> bool:
        return self._key(key) in obj

    def obj(self, value: Any, where: str, *,
            allowed: Collection[str] | None = None) -> dict[str, Any]:
        """A JSON object; ``allowed``: refuse keys outside it (strict formats only)."""
        if not isinstance(value, dict):
            self.fail(where, f"must be an object, got {kind_of(value)}")
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.fail(where, f"has a key {key!r} that is not a string")
            out.setdefault(self._key(key), item)
        if allowed is not None:
            known = {self._key(k) for k in allowed}
            unknown = sorted(k for k in out if k not in known)
            if unknown:
                self.fail(join(where, unknown[0]), "is not a known field")
        return out

    def opt_obj(self, obj: Mapping[str, Any], key: str, where: str) -> dict[str, Any] | None:
        value = self.raw(obj, key)
        return None if value is None else self.obj(value, join(where, key))

    def string(self, obj: Mapping[str, Any], key: str, where: str, default: Any = _MISSING, *,
               pattern: re.Pattern[str] | None = None, max_len: int = 4096,
               empty: bool = False) -> Any:
        """A string (``default`` when absent or null; required when no default is given)."""
        value = self.raw(obj, key)
        path = join(where, key)
        if value is None:
            if default is _MISSING:
                self.fail(path, "is required")
            return default
        return self.text(value, path, pattern=pattern, max_len=max_len, empty=empty)

    def text(self, value: Any, path: str, *, pattern: re.Pattern[str] | None = None,
             max_len: int = 4096, empty: bool = False) -> str:
        """``value`` itself as a string, with the same rules as :meth:`string`."""
        if not isinstance(value, str):
            self.fail(path, f"must be a string, got {kind_of(value)}")
        if not value and not empty:
            self.fail(path, "must not be empty")
        if len(value) > max_len:
            self.fail(path, f"is longer than {max_len} characters")
        if "\x00" in value:
            self.fail(path, "contains a NUL character")
        if pattern is not None and value and not pattern.fullmatch(value):
            self.fail(path, f"{value!r} is not valid")
        return value

    def integer(self, obj: Mapping[str, Any], key: str, where: str, low: int, high: int,
                default: Any = None) -> Any:
        """An integer in [low, high]; JSON true/false and 1.0 are not integers."""
        value = self.raw(obj, key)
        if value is None:
            return default
        return self.int_value(value, join(where, key), low, high)

    def int_value(self, value: Any, path: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, f"must be an integer from {low} to {high}, got {kind_of(value)}")
        if not low <= value <= high:
            self.fail(path, f"must be an integer from {low} to {high}, got {value}")
        return value

    def boolean(self, obj: Mapping[str, Any], key: str, where: str, default: Any = None) -> Any:
        value = self.raw(obj, key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(join(where, key), f"must be true or false, got {kind_of(value)}")
        return value

    def choice(self, obj: Mapping[str, Any], key: str, where: str, choices: Mapping[str, T],
               default: Any = None, *, fold_case: bool = False) -> Any:
        """One of ``choices``' keys, mapped to its value (``default`` when absent)."""
        value = self.raw(obj, key)
        if value is None:
            return default
        return self.choice_value(value, join(where, key), choices, fold_case=fold_case)

    def choice_value(self, value: Any, path: str, choices: Mapping[str, T], *,
                     fold_case: bool = False) -> T:
        text = self.text(value, path, max_len=256)
        table = {k.lower(): v for k, v in choices.items()} if fold_case else choices
        found = table.get(text.lower() if fold_case else text, _MISSING)
        if found is _MISSING:
            self.fail(path, f"{text!r} is not one of {', '.join(choices)}")
        return found

    def items(self, obj: Mapping[str, Any], key: str, where: str, *,
              max_items: int = 4096) -> list[Any]:
        """A list (empty when absent or null)."""
        value = self.raw(obj, key)
        if value is None:
            return []
        path = join(where, key)
        if not isinstance(value, list):
            self.fail(path, f"must be a list, got {kind_of(value)}")
        if len(value) > max_items:
            self.fail(path, f"has more than {max_items} entries")
        return value

    def strings(self, obj: Mapping[str, Any], key: str, where: str, *,
                pattern: re.Pattern[str] | None = None, max_items: int = 4096,
                max_len: int = 4096) -> tuple[str, ...]:
        """A list of non-empty strings (empty when absent or null)."""
        path = join(where, key)
        return tuple(self.text(v, join(path, i), pattern=pattern, max_len=max_len)
                     for i, v in enumerate(self.items(obj, key, where, max_items=max_items)))

    def pci_id(self, value: Any, path: str) -> str:
        """A PCI vendor/device ID, lower case (see :data:`PCI_ID`). ``0x8086`` reads as
        ``8086``, and so does an unquoted YAML/JSON number of four digits (``vendor: 8086``);
        fewer digits are refused, not zero-padded ("86" is no ID sysfs shows)."""
        if isinstance(value, int) and not isinstance(value, bool) and 1000 <= value <= 9999:
            value = str(value)
        text = self.text(value, path, max_len=16)
        digits = text[2:] if text[:2].lower() == "0x" else text
        if not PCI_ID.fullmatch(digits):
            self.fail(path, f"must be 4 hex digits such as \"8086\", got {text!r}")
        return digits.lower()

    def pci_address(self, value: Any, path: str) -> str:
        """A PCI function address (see :data:`PCI_ADDRESS`), lower case."""
        text = self.text(value, path, max_len=64)
        if not PCI_ADDRESS.fullmatch(text):
            self.fail(path, f"{text!r} is not a PCI address such as 0000:3b:02.1")
        return text.lower()

    def mac(self, value: Any, path: str) -> str:
        """A unicast MAC address, lower case."""
        text = self.text(value, path, max_len=64)
        if not MAC.fullmatch(text):
            self.fail(path, f"{text!r} is not a MAC address (xx:xx:xx:xx:xx:xx)")
        if int(text[:2], 16) & 1:
            self.fail(path, f"{text} is a multicast MAC address")
        if text == "00:00:00:00:00:00":
            self.fail(path, "00:00:00:00:00:00 is not a usable MAC address")
        return text.lower()

    # -- addresses: never a scoped IPv6 address (``fe80::1%eth0``): no CNI field means one --

    def ip(self, value: Any, path: str) -> IPAddress:
        """An IPv4 or IPv6 address (blanks around it ignored, as Go's net.ParseIP does not)."""
        text = self._address_text(value, path)
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            self.fail(path, f"{text!r} is not an IP address")

    def cidr(self, value: Any, path: str) -> IPNetwork:
        """A network in CIDR form; host bits are ignored, as Go's ParseCIDR does."""
        text = self._address_text(value, path)
        if "/" not in text:
            self.fail(path, f"{text!r} is not in CIDR form (address/prefix length)")
        try:
            return ipaddress.ip_network(text, strict=False)
        except ValueError:
            self.fail(path, f"{text!r} is not a valid CIDR")

    def interface(self, value: Any, path: str) -> IPInterface:
        """An address with its prefix length (``10.1.2.3/24``)."""
        text = self._address_text(value, path)
        if "/" not in text:
            self.fail(path, f"{text!r} has no prefix length (address/prefix length)")
        try:
            return ipaddress.ip_interface(text)
        except ValueError:
            self.fail(path, f"{text!r} is not a valid address/prefix length")

    def _address_text(self, value: Any, path: str) -> str:
        text = self.text(value, path, max_len=128).strip()
        if "%" in text:
            self.fail(path, f"{text!r} has a scope (%zone): not allowed here")
        return text

    # -- index lists --------------------------------------------------------------------------

    def index_set(self, value: Any, path: str, limit: int, *, what: str = "VF",
                  scope: str = "") -> frozenset[int]:
        """``"0-3,6"`` -> {0, 1, 2, 3, 6}; every index below ``limit`` (checked before any set
        is built, so ``"0-99999999999"`` costs nothing). ``scope`` names the valid indexes in
        messages (``"the PF's VFs"``)."""
        text = self.text(value, path, max_len=4096)
        if not INDEX_LIST.fullmatch(text):
            self.fail(path, f"bad {what} range {text!r}: give indexes such as \"0-3,6\"")
        scope = scope or f"{what}s"
        spans: list[tuple[int, int]] = []
        for part in text.split(","):
            low, _, high = part.partition("-")
            first, last = int(low), int(high or low)
            if first > last:
                self.fail(path, f"range {part.strip()} ends before it starts")
            if last >= limit:
                self.fail(path, f"{part.strip()} is not within {scope} 0-{limit - 1}")
            spans.append((first, last))
        found: set[int] = set()
        end = -1  # spans merged first: repeated ranges cost nothing more
        for first, last in sorted(spans):
            found.update(range(max(first, end + 1), last + 1))
            end = max(end, last)
        return frozenset(found)
