"""JSON and YAML documents from outside (CNI stdin, config.json, the node policy), decoded
without letting the document choose the cost: a size cap, strict UTF-8, and a nesting limit
checked without recursion, so no input can raise anything but :class:`DocumentError`.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from yaml.loader import SafeLoader

#: Deeper than any real configuration; far below the interpreter's recursion limit.
MAX_DEPTH = 64


class DocumentError(ValueError):
    """The document cannot be decoded; the message says why (callers add their own code/path)."""


def parse_json(data: bytes | str, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """Decode a JSON document of at most ``max_bytes`` bytes and ``max_depth`` nesting levels."""
    text = _text(data, max_bytes)
    try:
        doc = json.loads(text)
    except RecursionError:
        raise DocumentError(f"nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise DocumentError(f"not valid JSON: {exc}") from None
    check_depth(doc, max_depth)
    return doc


def parse_yaml(data: bytes | str, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """Decode a YAML (or JSON) document with the safe loader, under the same limits."""
    # Only YAML readers pay for it (the CNI request path reads JSON only), and only for the
    # pure-Python safe loader's modules: yaml's package __init__ (deferred in nodeagent's
    # __init__) would add the dumpers and libyaml's bindings.
    from yaml.error import YAMLError

    text = _text(data, max_bytes)
    loader = None
    try:
        loader = _loader_class()(text)  # its reader already refuses unprintable characters
        loader.max_depth = max_depth
        doc = loader.get_single_data()
    except RecursionError:
        raise DocumentError(f"nested deeper than {max_depth} levels") from None
    except YAMLError as exc:
        if getattr(exc, "too_deep", False):
            raise DocumentError(f"nested deeper than {max_depth} levels") from None
        raise DocumentError(f"not valid YAML: {exc}") from None
    finally:
        if loader is not None:
            loader.dispose()
    check_depth(doc, max_depth)
    return doc


def check_depth(doc: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise DocumentError if lists/objects nest deeper than ``max_depth`` (iterative walk)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > max_depth:
            raise DocumentError(f"nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children)


def _text(data: bytes | str, max_bytes: int) -> str:
    size = len(data.encode() if isinstance(data, str) else data)
    if size > max_bytes:
        raise DocumentError(f"larger than {max_bytes} bytes")
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"not valid UTF-8 at byte {exc.start}") from None


@functools.cache
def _loader_class() -> type[SafeLoader]:
    """The safe loader, without aliases and with the nesting limit checked while composing.

    YAML aliases let a small document expand into a huge one ("billion laughs"); configuration
    files here have no use for them. PyYAML composes recursively, and running into the
    interpreter's recursion limit takes seconds: the depth is counted on the way down.
    """
    from yaml import loader
    from yaml.composer import ComposerError
    from yaml.events import AliasEvent

    class SafeLoader(loader.SafeLoader):
        max_depth = MAX_DEPTH
        _depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(AliasEvent):
                event = self.peek_event()
                raise ComposerError(None, None, "aliases (*name) are not allowed",
                                    event.start_mark)
            self._depth += 1
            try:
                if self._depth > self.max_depth:
                    error = ComposerError(None, None, "nested too deep",
                                          self.peek_event().start_mark)
                    error.too_deep = True  # type: ignore[attr-defined]
                    raise error
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return SafeLoader
