"""The ``nodeagent`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from cni.errors import CniError
from cni.install import FALLBACK_NAME, PLUGIN_NAMES
from cni.install import install as install_plugins
from cni.server import DEFAULT_SOCKET, CniServer
from cni.shim import shim_path
from deviceplugin import config as dp_config
from deviceplugin.api import DEVICE_PLUGIN_PATH
from deviceplugin.manager import DevicePluginManager
from nodeagent import __version__
from nodeagent.discovery import Scanner
from nodeagent.ipam import ops as ipam_ops
from nodeagent.ipam.allocator import Ipam
from nodeagent.ipam.config import parse_config
from nodeagent.ipam.filestore import DEFAULT_STATE_DIR
from nodeagent.model import Node
from nodeagent.netlink import Netlink
from nodeagent.render import inventory_table
from nodeagent.sysfs import Sysfs
from nodeagent.watch import LiveInventory

log = logging.getLogger("nodeagent")


def _inventory_args(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inventory",
        help="show NICs, SR-IOV PFs and VFs",
        description="Show every NIC, SR-IOV physical function and virtual function of this node.",
    )
    p.add_argument("--json", action="store_true",
                   help="print the JSON document described in docs/inventory.md")
    p.add_argument("--watch", action="store_true",
                   help="keep running and print the inventory again whenever the kernel changes it"
                        " (with --json: one document per line, with the changed NIC keys)")
    p.add_argument("--sysfs-root", default="/sys", metavar="DIR",
                   help="where sysfs is mounted (default: /sys)")
    p.add_argument("--netns", metavar="NAME|PATH",
                   help="read links, VF settings and routes in this network namespace")
    p.add_argument("--netlink", action=argparse.BooleanOptionalAction, default=None,
                   help="read links over netlink (default: on when --sysfs-root is /sys or"
                        " --netns is given; off for a sysfs tree that is not the kernel's)")
    p.set_defaults(func=cmd_inventory)


def cmd_inventory(args: argparse.Namespace) -> int:
    sysfs = Sysfs(args.sysfs_root)
    use_netlink = args.netlink
    if use_netlink is None:
        use_netlink = args.sysfs_root == "/sys" or args.netns is not None
    if args.watch:
        return _watch(args, sysfs, use_netlink)
    netlink = Netlink(args.netns) if use_netlink else None
    try:
        node = Scanner(sysfs, netlink).scan()
    finally:
        if netlink is not None:
            netlink.close()
    _print(node, args.json)
    return 0


def _print(node: Node, as_json: bool, changed: frozenset[str] | None = None) -> None:
    if as_json:
        doc = node.to_dict()
        if changed is not None:
            doc["changed"] = sorted(changed)
        print(json.dumps(doc, indent=None if changed is not None else 2), flush=True)
    else:
        if changed is not None:
            print(f"--- changed: {', '.join(sorted(changed)) or 'initial scan'}")
        print(inventory_table(node), flush=True)


def _watch(args: argparse.Namespace, sysfs: Sysfs, use_netlink: bool) -> int:
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    inventory = LiveInventory(sysfs, netns=args.netns, netlink=use_netlink,
                              udev=args.sysfs_root == "/sys")
    node = inventory.start()
    _print(node, args.json, frozenset())
    inventory.subscribe(lambda n, changed: _print(n, args.json, changed))
    try:
        done.wait()
    finally:
        inventory.stop()
    return 0


def _daemon_args(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("daemon", help="run the agent: live inventory and the CNI socket",
                       description="Run the node agent with embedded defaults: it follows the"
                       " node's NICs and serves CNI requests from the shim.")
    p.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH",
                   help=f"CNI socket (default: {DEFAULT_SOCKET}); root-only")
    p.add_argument("--sysfs-root", default="/sys", metavar="DIR")
    p.add_argument("--workers", type=int, default=32, help="concurrent CNI requests")
    p.add_argument("--device-plugin-config", type=Path, default=Path(dp_config.DEFAULT_PATH),
                   metavar="FILE", help="sriov-network-device-plugin resource pools (default:"
                   f" {dp_config.DEFAULT_PATH}); the device plugin runs when the file exists")
    p.add_argument("--device-plugin-dir", default=DEVICE_PLUGIN_PATH, metavar="DIR",
                   help=f"kubelet's device plugin directory (default: {DEVICE_PLUGIN_PATH})")
    p.add_argument("--allocation-policy", choices=["pack", "spread"], default="pack",
                   help="preferred allocation: fewest PFs (pack) or most (spread)")
    p.set_defaults(func=cmd_daemon)


def cmd_daemon(args: argparse.Namespace) -> int:
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    inventory = LiveInventory(Sysfs(args.sysfs_root), udev=args.sysfs_root == "/sys")
    node = inventory.start()
    log.info("inventory: %d NICs, %d SR-IOV PFs", len(node.nics), len(node.pfs))
    server = CniServer(args.socket, workers=args.workers)
    server.start()
    plugins = None
    if args.device_plugin_config.exists():
        plugins = DevicePluginManager(dp_config.load(args.device_plugin_config),
                                      args.device_plugin_dir, policy=args.allocation_policy)
        plugins.attach(inventory)
        log.info("device plugin: resources %s", ", ".join(sorted(plugins.servers)) or "none")
    try:
        done.wait()
    finally:
        if plugins is not None:
            plugins.stop()
        server.stop()
        inventory.stop()
    return 0


def _cni_args(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cni", help="CNI plugin installation")
    cni_sub = p.add_subparsers(dest="cni_command", required=True)
    install = cni_sub.add_parser(
        "install", help="install the CNI shim",
        description="Install the CNI shim into a CNI bin dir as " + ", ".join(PLUGIN_NAMES)
        + f", plus {FALLBACK_NAME} (used when the daemon is unreachable).")
    install.add_argument("--dest", required=True, type=Path, metavar="DIR",
                         help="the runtime's CNI bin dir, e.g. /opt/cni/bin")
    install.set_defaults(func=cmd_cni_install)


def cmd_cni_install(args: argparse.Namespace) -> int:
    for path in install_plugins(args.dest, shim_path()):
        print(path)
    return 0


def _ipam_args(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ipam", help="IPAM state: usage, reservations, garbage collection")
    ipam_sub = p.add_subparsers(dest="ipam_command", required=True)
    show = ipam_sub.add_parser("show", help="usage, free addresses and reservations of a network")
    gc = ipam_sub.add_parser("gc", help="release reservations whose attachment is not live")
    for q in (show, gc):
        q.add_argument("--config", required=True, type=Path, metavar="FILE",
                       help="the network's CNI config (a plugin config with an 'ipam' object)")
        q.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                       help=f"node-local store (default: {DEFAULT_STATE_DIR})")
    gc.add_argument("--live", nargs="*", default=[], metavar="CONTAINERID/IFNAME",
                    help="attachments to keep")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be released")
    show.set_defaults(func=cmd_ipam_show)
    gc.set_defaults(func=cmd_ipam_gc)


def cmd_ipam_show(args: argparse.Namespace) -> int:
    ipam = Ipam(args.state_dir)
    try:
        print(ipam_ops.render(ipam_ops.show(parse_config(args.config.read_bytes()), ipam)))
    finally:
        ipam.close()
    return 0


def cmd_ipam_gc(args: argparse.Namespace) -> int:
    ipam = Ipam(args.state_dir)
    live = [tuple(item.rsplit("/", 1)) for item in args.live]
    try:
        gone = ipam_ops.gc_against(parse_config(args.config.read_bytes()), live,
                                   dry_run=args.dry_run, ipam=ipam)
    finally:
        ipam.close()
    for r in gone:
        print(f"{'would release' if args.dry_run else 'released'} {r.ip}"
              f" {r.owner.container_id}/{r.owner.ifname} {r.owner.pod or '-'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodeagent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nodeagent {__version__}")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)
    _inventory_args(sub)
    _daemon_args(sub)
    _cni_args(sub)
    _ipam_args(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except CniError as exc:
        print(f"nodeagent: {exc} (CNI error {exc.code})", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `nodeagent inventory | head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, TimeoutError) as exc:
        print(f"nodeagent: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
