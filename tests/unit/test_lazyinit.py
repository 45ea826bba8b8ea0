"""A deferred package: its submodules import alone, its own names still work, and the agent
does not load the parts of pyroute2 and kubernetes it never uses."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.bench.common import REPO

PACKAGE = {
    "__init__.py": """
        import heavypkg.extra
        from heavypkg.core import VALUE as VALUE
        LOADED = True
    """,
    "core.py": "VALUE = 42\n",
    "extra.py": "EXTRA = True\n",
    "other.py": "OTHER = 1\n",
}


def run(code: str, path: Path | None = None) -> dict:
    """``code`` in a fresh interpreter (imports are process-wide); it prints one JSON value."""
    env_path = [str(REPO)] + ([str(path)] if path else [])
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, check=True, cwd=REPO,
                          env={"PYTHONPATH": ":".join(env_path), "PATH": "/usr/bin:/bin"})
    return json.loads(proc.stdout)


@pytest.fixture
def heavy(tmp_path: Path) -> Path:
    package = tmp_path / "heavypkg"
    package.mkdir()
    for name, text in PACKAGE.items():
        (package / name).write_text(textwrap.dedent(text))
    return tmp_path


def test_a_submodule_imports_without_the_package_init(heavy: Path) -> None:
    out = run("""
        import json, sys
        from nodeagent import lazyinit
        lazyinit.defer("heavypkg")
        from heavypkg.core import VALUE
        print(json.dumps({"value": VALUE, "extra": "heavypkg.extra" in sys.modules,
                          "deferred": lazyinit.deferred("heavypkg")}))
    """, heavy)
    assert out == {"value": 42, "extra": False, "deferred": True}


def test_a_name_the_init_defines_runs_it_once(heavy: Path) -> None:
    out = run("""
        import json, sys
        from nodeagent import lazyinit
        lazyinit.defer("heavypkg")
        import heavypkg.core
        from heavypkg import other            # a submodule: imported alone
        alone = "heavypkg.extra" not in sys.modules
        from heavypkg import LOADED, VALUE    # defined by __init__: it runs
        import heavypkg
        try:
            heavypkg.missing
            missing = "found"
        except AttributeError:
            missing = "AttributeError"
        print(json.dumps({"alone": alone, "other": other.OTHER, "loaded": LOADED,
                          "value": VALUE, "extra": heavypkg.extra.EXTRA, "missing": missing,
                          "deferred": lazyinit.deferred("heavypkg")}))
    """, heavy)
    assert out == {"alone": True, "other": 1, "loaded": True, "value": 42, "extra": True,
                   "missing": "AttributeError", "deferred": False}


def test_a_subpackage_deferred_before_its_parent_is_imported(heavy: Path) -> None:
    sub = heavy / "heavypkg" / "sub"
    sub.mkdir()
    (sub / "__init__.py").write_text("import heavypkg.other\nSUB = True\n")
    (sub / "probe.py").write_text("PROBE = 1\n")
    (heavy / "heavypkg" / "core.py").write_text("from .sub import probe\nVALUE = 42\n")
    out = run("""
        import json, sys
        from nodeagent import lazyinit
        lazyinit.defer("heavypkg.sub")            # imports heavypkg, which imports .sub.probe
        import heavypkg
        alone = "heavypkg.other" not in sys.modules
        print(json.dumps([heavypkg.VALUE, heavypkg.sub.probe.PROBE, alone, heavypkg.sub.SUB,
                          "heavypkg.other" in sys.modules]))
    """, heavy)
    assert out == [42, 1, True, True, True]


def test_a_lazy_module_runs_on_its_first_name(heavy: Path) -> None:
    (heavy / "heavypkg" / "loud.py").write_text("import heavypkg.side\nNAME = 'loud'\n")
    (heavy / "heavypkg" / "side.py").write_text("SIDE = 1\n")
    out = run("""
        import json, sys
        from nodeagent import lazyinit
        lazyinit.lazy("heavypkg.loud", "heavypkg.absent", "nosuchpkg.mod")
        from heavypkg import loud
        before = "heavypkg.side" in sys.modules
        print(json.dumps([before, loud.NAME, "heavypkg.side" in sys.modules]))
    """, heavy)
    assert out == [False, "loud", True]


def test_generated_protobuf_modules_work_without_the_pure_python_messages() -> None:
    out = run("""
        import json, sys
        import nodeagent
        from deviceplugin import api
        pb2, _ = api.modules()
        m = pb2.AllocateRequest(container_requests=[
            pb2.ContainerAllocateRequest(devices_ids=["0000:3b:02.0"])])
        same = pb2.AllocateRequest.FromString(m.SerializeToString()) == m
        print(json.dumps([same, "google.protobuf.text_format" in sys.modules]))
    """)
    assert out == [True, False]


def test_the_agent_leaves_unused_library_parts_unloaded() -> None:
    out = run("""
        import json, sys
        import nodeagent.daemon, nodeagent.k8s.client, nodeagent.k8s.nodestate
        from nodeagent.documents import parse_yaml
        parse_yaml(b"policies: []", max_bytes=100)
        print(json.dumps(sorted(m for m in ("pyroute2.ndb", "pyroute2.ipset", "kubernetes.dynamic",
                                             "kubernetes.stream", "jsonschema", "pydantic",
                                             "requests", "oauthlib", "importlib.metadata",
                                             "html.entities", "kubernetes.utils.quantity",
                                             "pyroute2.netlink.rtnl.tcmsg",
                                             "pyroute2.netlink.nlsocket", "grpc.aio._channel",
                                             "yaml.dumper", "yaml._yaml")
                                if m in sys.modules)))
    """)
    assert out == []


def test_libraries_still_work_whole_after_the_agent_is_imported() -> None:
    out = run("""
        import json
        import nodeagent.daemon
        from pyroute2 import IPRoute, netns
        import kubernetes
        print(json.dumps([IPRoute.__name__, netns.__name__, kubernetes.__version__,
                          kubernetes.watch.__name__]))
    """)
    assert out[:2] == ["IPRoute", "pyroute2.netns"] and out[3] == "kubernetes.watch"


def test_the_daemon_leaves_unused_parts_of_its_own_unloaded() -> None:
    """What `nodeagent daemon` imports: no table renderer, no policy compiler or libnftables
    before a pod needs rules, no link type until a request asks for it; each type still loads
    by its name."""
    out = run("""
        import json, sys
        import nodeagent.cli
        from cni.dispatch import KINDS
        before = sorted(m for m in sys.modules if m.startswith("cni.kinds.")
                        or m in ("tabulate", "nodeagent.render", "nodeagent.statusview",
                                 "nodeagent.policy.compile", "nodeagent.policy.nft"))
        kinds = {name: KINDS[name].kind for name in KINDS}
        print(json.dumps([before, kinds, "bond" in KINDS, "nope" in KINDS]))
    """)
    before, kinds, bond, nope = out
    assert before == []
    assert kinds == {name: name for name in ("macvlan", "ipvlan", "vlan", "sriov", "sbr",
                                             "vxlan", "bond")}
    assert bond and not nope
