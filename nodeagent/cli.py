"""The ``nodeagent`` command line."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from cni.install import (
    FALLBACK_NAME,
    OWN_NAMES,
    TAKEOVER_NAMES,
    InstallError,
    install_changes,
    parse_names,
    uninstall,
)
from cni.server import DEFAULT_SOCKET
from cni.shim import shim_path
from deviceplugin import config as dp_config
from deviceplugin.api import DEVICE_PLUGIN_PATH
from nodeagent import __version__, logs
from nodeagent import settings as agent_settings
from nodeagent.cnitypes.errors import CniError
from nodeagent.daemon import Daemon, DaemonConfig
from nodeagent.discovery import Scanner
from nodeagent.httpserver import DEFAULT_ADDRESS as DEFAULT_METRICS_ADDRESS
from nodeagent.ipam import ops as ipam_ops
from nodeagent.ipam.allocator import Ipam
from nodeagent.ipam.config import parse_config
from nodeagent.ipam.configtypes import IPAMConfig
from nodeagent.ipam.filestore import DEFAULT_STATE_DIR
from nodeagent.model import Node
from nodeagent.netlink import Netlink
from nodeagent.provision.policy import PolicyError
from nodeagent.provision.policy import load as load_policy
from nodeagent.provision.reconciler import Reconciler
from nodeagent.status import DEFAULT_PATH as DEFAULT_STATUS_PATH
from nodeagent.status import read as read_status
from nodeagent.sysfs import Sysfs
from nodeagent.vfstate import VfState
from nodeagent.watch import LiveInventory

log = logging.getLogger("nodeagent")

DEFAULT_POLICY = "/etc/nodeagent/policy.yaml"


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
        from nodeagent.render import inventory_table  # tabulate: not for the daemon

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
    _log_format_arg(p, argparse.SUPPRESS)  # also after the subcommand, as DaemonSets say it
    p.add_argument("--policy", type=Path, default=Path(DEFAULT_POLICY), metavar="FILE",
                   help=f"VF provisioning policy (default: {DEFAULT_POLICY}); reconciled while"
                   " the file exists, re-read when it changes")
    p.add_argument("--status-file", default=DEFAULT_STATUS_PATH, metavar="PATH",
                   help=f"where `nodeagent status` reads the agent's state (default:"
                   f" {DEFAULT_STATUS_PATH})")
    p.add_argument("--metrics-address", default=DEFAULT_METRICS_ADDRESS, metavar="HOST:PORT",
                   help="serve /metrics, /healthz and /readyz here (default:"
                   f" {DEFAULT_METRICS_ADDRESS}; empty: off)")
    p.add_argument("--settings", type=Path, default=agent_settings.DEFAULT_PATH,
                   metavar="FILE", help="the agent's settings: state dirs, cluster store"
                   f" (default: {agent_settings.DEFAULT_PATH}, if it exists); the flags below"
                   " override it, and the CNI fallback uses the same")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help=f"VF attachment records (default: {agent_settings.DEFAULT_STATE_DIR})")
    p.add_argument("--ipam-state-dir", default=None, metavar="DIR",
                   help=f"node-local IPAM store (default: {DEFAULT_STATE_DIR})")
    p.add_argument("--ipam-etcd-endpoints", default=None, metavar="URL[,URL...]",
                   help="the cluster store: etcd serving whereabouts configs cluster-wide"
                   " (https:// turns TLS on)")
    p.add_argument("--ipam-etcd-ca-file", default=None, metavar="FILE")
    p.add_argument("--ipam-etcd-cert-file", default=None, metavar="FILE")
    p.add_argument("--ipam-etcd-key-file", default=None, metavar="FILE")
    p.add_argument("--ipam-cluster-name", default=None, metavar="NAME",
                   help="this cluster's name in a shared etcd")
    p.add_argument("--node-name", default=None, metavar="NAME",
                   help="this node's Kubernetes name (default: $NODE_NAME, else the hostname)")
    p.add_argument("--kubeconfig", default=None, metavar="FILE",
                   help="talk to the API with this kubeconfig (default: in-cluster config)")
    p.add_argument("--publish-node-state", action=argparse.BooleanOptionalAction, default=None,
                   help="keep a NodeNetworkState resource and Node events current (default: on"
                   " in a cluster or with --kubeconfig)")
    p.add_argument("--network-policy", action=argparse.BooleanOptionalAction, default=None,
                   help="enforce MultiNetworkPolicies on the pods' attachments (default: on in"
                   " a cluster or with --kubeconfig; docs/policy-sync.md)")
    p.add_argument("--cni-bin-dir", type=Path, default=None, metavar="DIR",
                   help="install the CNI shim into this dir at start (as `cni install`)")
    _provision_tuning_args(p)
    p.set_defaults(func=cmd_daemon)


def _provision_tuning_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--numvfs-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="give up on a sriov_numvfs write after this long and report the PF"
                   " failed (default: 120)")


def cmd_daemon(args: argparse.Namespace) -> int:
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    publish = args.publish_node_state
    if publish is None:
        # in a pod (KUBERNETES_SERVICE_HOST is set), or told where the API is
        publish = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) or args.kubeconfig is not None
    network_policy = args.network_policy
    if network_policy is None:
        network_policy = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) \
            or args.kubeconfig is not None
    try:
        settings = agent_settings.with_flags(
            agent_settings.load_optional(args.settings), state_dir=args.state_dir,
            ipam_state_dir=args.ipam_state_dir, etcd_endpoints=args.ipam_etcd_endpoints,
            etcd_ca_file=args.ipam_etcd_ca_file, etcd_cert_file=args.ipam_etcd_cert_file,
            etcd_key_file=args.ipam_etcd_key_file, cluster_name=args.ipam_cluster_name,
            kubeconfig=args.kubeconfig)
    except agent_settings.SettingsError as exc:
        print(f"nodeagent: settings: {exc}", file=sys.stderr)
        return 2
    daemon = Daemon(DaemonConfig(
        socket=args.socket, sysfs_root=args.sysfs_root, workers=args.workers,
        device_plugin_config=args.device_plugin_config, device_plugin_dir=args.device_plugin_dir,
        allocation_policy=args.allocation_policy, policy=args.policy,
        status_file=args.status_file, numvfs_timeout=args.numvfs_timeout,
        metrics_address=args.metrics_address, node_name=args.node_name,
        publish_node_state=publish, kubeconfig=args.kubeconfig,
        cni_bin_dir=args.cni_bin_dir, settings=settings, network_policy=network_policy))
    try:
        daemon.start()
        done.wait()
    finally:
        _stop_within(daemon, STOP_DEADLINE)
    return 0


#: SIGTERM ends the daemon within this many seconds, whatever is in flight.
STOP_DEADLINE = 1.8


def _stop_within(daemon: Daemon, seconds: float) -> None:
    """Stop the daemon's parts; if that takes longer than ``seconds`` (a part stuck in the
    kernel or on the network), exit anyway: the next agent must get the node."""
    watchdog = threading.Timer(seconds, _exit_now, args=(seconds,))
    watchdog.daemon = True
    watchdog.start()
    try:
        daemon.stop()
    finally:
        watchdog.cancel()


def _exit_now(seconds: float) -> None:
    log.error("not stopped within %g s; exiting with work in flight", seconds)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(1)


def _provision_args(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "provision", help="apply a VF provisioning policy",
        description="Bring the PFs a policy selects to its state (VF count, drivers, MTU, VF"
        " settings). Exits 0 when the node matches the policy, 1 when a PF is blocked or"
        " failed, 2 when the policy is invalid.")
    p.add_argument("--policy", required=True, type=Path, metavar="FILE",
                   help="the policy file (YAML or JSON; see docs/provisioning.md)")
    p.add_argument("--once", action="store_true",
                   help="apply once and exit (the daemon keeps applying it: `daemon --policy`)")
    p.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    p.add_argument("--sysfs-root", default="/sys", metavar="DIR")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    _provision_tuning_args(p)
    p.set_defaults(func=cmd_provision)


def cmd_provision(args: argparse.Namespace) -> int:
    if not (args.once or args.dry_run):
        print("nodeagent: provision needs --once or --dry-run; to keep a node provisioned run"
              " `nodeagent daemon --policy FILE`", file=sys.stderr)
        return 2
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(f"nodeagent: invalid policy: {exc}", file=sys.stderr)
        return 2
    sysfs = Sysfs(args.sysfs_root)
    reconciler = Reconciler(sysfs, vfstate=VfState.default(), numvfs_timeout=args.numvfs_timeout)
    with Netlink() as netlink:
        result = reconciler.reconcile(policy, Scanner(sysfs, netlink), dry_run=args.dry_run)
    if args.json:
        print(json.dumps({
            "matches": result.matches, "unmatched": list(result.unmatched),
            "pfs": [{"pciAddress": o.pci, "name": o.name, "policy": o.policy,
                     "state": o.decision.state, "reason": o.decision.reason,
                     "applied": list(o.applied)} for o in result.outcomes]}, indent=2))
    else:
        from nodeagent.statusview import pass_table

        print(pass_table(result, args.dry_run))
    return 0 if result.matches else 1


def _status_args(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="what the running agent is doing",
                       description="PF provisioning states, device pools, allocations by pod and"
                       " recent errors, as the running daemon last recorded them.")
    p.add_argument("--status-file", default=DEFAULT_STATUS_PATH, metavar="PATH")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    try:
        snap = read_status(args.status_file)
    except FileNotFoundError:
        print(f"nodeagent: no status at {args.status_file}: is `nodeagent daemon` running?",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(snap, indent=2))
    else:
        from nodeagent.statusview import status_screen

        print(status_screen(snap))
    return 0


def _cni_args(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cni", help="CNI plugin installation")
    cni_sub = p.add_subparsers(dest="cni_command", required=True)
    install = cni_sub.add_parser(
        "install", help="install the CNI shim, keeping the files it replaces",
        description="Install the CNI shim into a CNI bin dir as " + ", ".join(OWN_NAMES)
        + " and the plugin names it takes over (--take-over), plus " + FALLBACK_NAME
        + " (used when the daemon is unreachable). Every file it replaces is kept in"
        " DIR/.nodeagent/originals and listed in DIR/.nodeagent/manifest.json;"
        " `nodeagent cni uninstall` puts them back.")
    install.add_argument("--dest", required=True, type=Path, metavar="DIR",
                         help="the runtime's CNI bin dir, e.g. /opt/cni/bin")
    install.add_argument("--take-over", default=",".join(TAKEOVER_NAMES), metavar="NAMES",
                         help="comma-separated plugin names the agent serves instead of the"
                         " plugin of that name, for every network of that type on the node"
                         f" (default: {','.join(TAKEOVER_NAMES)}; empty: none). Names taken over"
                         " before and left out now get their originals back")
    install.add_argument("--no-fallback", action="store_true",
                         help=f"leave {FALLBACK_NAME} out (and remove an old one): for a bin dir"
                         " on a host that does not have this Python environment, such as from"
                         " the DaemonSet's init container; requests then fail with CNI error 11"
                         " (try again later) while the agent is down")
    install.set_defaults(func=cmd_cni_install)
    remove = cni_sub.add_parser(
        "uninstall", help="put back the plugins the shim replaced",
        description="Undo `nodeagent cni install`: every file it replaced is put back, every shim"
        " that replaced nothing is removed, so no plugin name is left answering CNI error 11 for"
        " an agent that is gone. Running it again changes nothing.")
    remove.add_argument("--dest", required=True, type=Path, metavar="DIR",
                        help="the CNI bin dir given to `cni install`")
    remove.add_argument("--if-removed", action="store_true",
                        help="only when the agent is gone for good: its DaemonSet deleted or no"
                        " longer selecting this node, asked of the API as the pod $POD_NAME in"
                        " $POD_NAMESPACE on $NODE_NAME (the chart's preStop hook); on a rolling"
                        " update or a restart the shim stays")
    remove.add_argument("--kubeconfig", type=Path, metavar="FILE",
                        help="with --if-removed (default: the in-cluster service account)")
    remove.set_defaults(func=cmd_cni_uninstall)


def cmd_cni_install(args: argparse.Namespace) -> int:
    try:
        changes = install_changes(args.dest, shim_path(), fallback=not args.no_fallback,
                                  take_over=parse_names(args.take_over))
    except (InstallError, OSError) as exc:
        print(f"nodeagent: cni install: {exc}", file=sys.stderr)
        return 1
    for change in changes:
        print(change)
    return 0


def cmd_cni_uninstall(args: argparse.Namespace) -> int:
    if args.if_removed:
        from nodeagent.k8s.client import ApiError, build_client  # slow import: only here
        from nodeagent.k8s.removal import removal_reason

        env = {k: os.environ.get(k, "") for k in ("POD_NAMESPACE", "POD_NAME", "NODE_NAME")}
        if not all(env.values()):
            print("nodeagent: cni uninstall --if-removed needs POD_NAMESPACE, POD_NAME and"
                  " NODE_NAME", file=sys.stderr)
            return 2
        try:
            reason = removal_reason(build_client(kubeconfig=args.kubeconfig),
                                    env["POD_NAMESPACE"], env["POD_NAME"], env["NODE_NAME"])
        except ApiError as exc:
            print(f"nodeagent: cni uninstall: cannot tell whether the agent is removed ({exc});"
                  f" the shim stays in {args.dest}. If the agent is gone for good, run"
                  f" `nodeagent cni uninstall --dest {args.dest}` on the node.", file=sys.stderr)
            return 1
        if reason is None:
            print(f"{args.dest}: the agent is being replaced, not removed: the shim stays")
            return 0
        print(f"removing the shim: {reason}")
    try:
        changes = uninstall(args.dest)
    except (InstallError, OSError) as exc:
        print(f"nodeagent: cni uninstall: {exc}", file=sys.stderr)
        return 1
    for change in changes:
        print(change)
    if not changes:
        print(f"{args.dest}: nothing of nodeagent's installed")
    return 0


def _ipam_args(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ipam", help="IPAM state: usage, reservations, garbage collection")
    ipam_sub = p.add_subparsers(dest="ipam_command", required=True)
    show = ipam_sub.add_parser("show", help="usage, free addresses and reservations of a network")
    gc = ipam_sub.add_parser("gc", help="release reservations whose attachment is not live")
    imp = ipam_sub.add_parser(
        "import", help="take over the reservations another IPAM holds",
        description="Reserve, in the network's store, every address whereabouts' IPPool and"
        " OverlappingRangeIPReservation objects hold in the network's ranges, for the same"
        " container, interface and pod. Repeating it changes nothing.")
    for q in (show, gc, imp):
        q.add_argument("--config", required=True, type=Path, metavar="FILE",
                       help="the network's CNI config (a plugin config with an 'ipam' object)")
        q.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                       help=f"node-local store (default: the settings', {DEFAULT_STATE_DIR})")
        q.add_argument("--settings", type=Path, default=agent_settings.DEFAULT_PATH,
                       metavar="FILE", help="the agent's settings, for the cluster store"
                       f" (default: {agent_settings.DEFAULT_PATH}, if it exists)")
    imp.add_argument("--from-whereabouts", action="store_true", required=True,
                     help="read whereabouts.cni.cncf.io IPPools and"
                     " OverlappingRangeIPReservations from the Kubernetes API")
    imp.add_argument("--dry-run", action="store_true", help="only show what would be imported")
    imp.add_argument("--kubeconfig", type=Path, metavar="FILE",
                     help="default: the settings' kubeconfig, else the in-cluster account")
    imp.set_defaults(func=cmd_ipam_import)
    gc.add_argument("--live", nargs="*", default=[], metavar="CONTAINERID/IFNAME",
                    help="attachments to keep")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be released")
    gc.add_argument("--from-cluster", action="store_true",
                    help="also keep the attachments of pods the Kubernetes API lists on this node"
                    " (every node's pods for an etcd datastore); refuses to run when the pods"
                    " cannot be listed")
    gc.add_argument("--kubeconfig", type=Path, metavar="FILE",
                    help="with --from-cluster (default: the in-cluster service account)")
    gc.add_argument("--node-name", metavar="NAME",
                    help="with --from-cluster (default: $NODE_NAME, else the hostname)")
    show.set_defaults(func=cmd_ipam_show)
    gc.set_defaults(func=cmd_ipam_gc)


def _cli_ipam(args: argparse.Namespace) -> tuple[Ipam, agent_settings.Settings]:
    """An Ipam over the settings file (cluster store), ``--state-dir`` overriding its dir."""
    settings = agent_settings.load_optional(args.settings)
    if args.state_dir is not None:
        settings = dataclasses.replace(settings, ipam_state_dir=args.state_dir)
    return agent_settings.ipam_for(settings, whereabouts=None), settings


def cmd_ipam_show(args: argparse.Namespace) -> int:
    ipam, _ = _cli_ipam(args)
    try:
        print(ipam_ops.render(ipam_ops.show(parse_config(args.config.read_bytes()), ipam)))
    finally:
        ipam.close()
    return 0


def cmd_ipam_import(args: argparse.Namespace) -> int:
    from nodeagent.ipam.whereabouts import fetch as fetch_whereabouts
    from nodeagent.k8s.client import ApiError, build_client

    ipam, settings = _cli_ipam(args)
    try:
        config = parse_config(args.config.read_bytes())
        try:
            api = build_client(kubeconfig=args.kubeconfig or settings.kubeconfig)
            try:
                objects = fetch_whereabouts(api)
            finally:
                api.close()
        except ApiError as exc:
            print(f"nodeagent: cannot read whereabouts' objects from the Kubernetes API ({exc});"
                  " nothing imported", file=sys.stderr)
            return 1
        summary = ipam_ops.import_whereabouts(config, objects, dry_run=args.dry_run, ipam=ipam)
    finally:
        ipam.close()
    print(summary.render(args.dry_run))
    return 1 if summary.conflicts else 0


def cmd_ipam_gc(args: argparse.Namespace) -> int:
    ipam, _ = _cli_ipam(args)
    live = [tuple(item.rsplit("/", 1)) for item in args.live]
    try:
        config = parse_config(args.config.read_bytes())
        nodes = None
        if args.from_cluster:
            from nodeagent.k8s.client import ApiError
            try:
                keep, nodes = _cluster_keep(args, config, ipam)
            except ApiError as exc:
                print(f"nodeagent: cannot list pods from the Kubernetes API ({exc});"
                      " refusing to garbage-collect", file=sys.stderr)
                return 1
            live += keep
        gone = ipam_ops.gc_against(config, live, dry_run=args.dry_run, ipam=ipam)
        leases = [] if nodes is None else ipam_ops.release_leases_of_gone_nodes(
            config, nodes, dry_run=args.dry_run, ipam=ipam)
    finally:
        ipam.close()
    verb = "would release" if args.dry_run else "released"
    for r in gone:
        print(f"{verb} {r.ip} {r.owner.container_id}/{r.owner.ifname} {r.owner.pod or '-'}")
    for block, node in leases:
        print(f"{verb} block lease {block} of node {node} (not in the cluster)")
    return 0


def _log_format_arg(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--log-format", choices=logs.FORMATS, default=default,
                        help="log lines as JSON objects or text; auto (default): text when"
                        " stderr is a terminal, else JSON")


def _cluster_keep(args: argparse.Namespace, config: IPAMConfig,
                  ipam: Ipam) -> tuple[list[tuple[str, str]], frozenset[str] | None]:
    """Attachments of the pods the API lists, and for a cluster-wide store the cluster's
    nodes (None when not needed or not readable: block leases are then left alone).
    Imported here: the kubernetes package is slow."""
    from nodeagent.k8s.client import ApiError, build_client
    from nodeagent.k8s.pods import gc_keep_from_cluster, node_names

    reservations = ipam.store(config).reservations() if config.range_sets else []
    node = args.node_name or os.environ.get("NODE_NAME") or socket.gethostname()
    api = build_client(kubeconfig=args.kubeconfig)
    try:
        cluster_wide = config.datastore in ("etcd", "cluster")
        keep = gc_keep_from_cluster(api, None if cluster_wide else node, reservations)
        nodes = None
        if cluster_wide:
            try:
                nodes = node_names(api)
            except ApiError as exc:  # the agent's own account may not list nodes
                print(f"nodeagent: cannot list nodes ({exc}); block leases left as they are",
                      file=sys.stderr)
        return keep, nodes
    finally:
        api.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nodeagent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"nodeagent {__version__}")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"])
    _log_format_arg(parser, "auto")
    sub = parser.add_subparsers(dest="command", required=True)
    _inventory_args(sub)
    _daemon_args(sub)
    _provision_args(sub)
    _status_args(sub)
    _cni_args(sub)
    _ipam_args(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
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
