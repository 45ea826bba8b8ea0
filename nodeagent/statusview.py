"""Terminal rendering of provisioning outcomes and of the daemon's status snapshot."""

from __future__ import annotations

import time
from typing import Any

from tabulate import tabulate

from nodeagent.provision.reconciler import PassResult


def pass_table(result: PassResult, dry_run: bool = False) -> str:
    rows = []
    for o in result.outcomes:
        state = o.decision.state
        if dry_run and state == "applying":
            state = "would apply"
        detail = o.decision.reason or ("applied: " + "; ".join(o.applied) if o.applied else "")
        rows.append((o.name, o.pci, o.policy, state, detail or "-"))
    lines = [tabulate(rows, headers=("PF", "PCI", "POLICY", "STATE", "DETAIL"))
             if rows else "no PF on this node is selected by the policy"]
    lines += [f"note: policy entry {name!r} selects no PF on this node"
              for name in result.unmatched]
    return "\n".join(lines)


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    seconds = max(0, int(now - ts))
    if seconds < 120:
        return f"{seconds}s"
    return f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"


def status_screen(snap: dict[str, Any], now: float | None = None) -> str:
    """``nodeagent status``: PF states, pools, allocations by pod, recent errors."""
    now = time.time() if now is None else now
    out = [f"last change {_ago(snap.get('time'), now)} ago"]
    pfs = [(p["name"] or "-", p["pciAddress"], p["state"],
            f"{p['numVfs']}/{p['desiredNumVfs'] if p['desiredNumVfs'] is not None else '-'}",
            _ago(p.get("since"), now), p["reason"] or "-") for p in snap.get("pfs", [])]
    out += ["", "PHYSICAL FUNCTIONS",
            tabulate(pfs, headers=("PF", "PCI", "STATE", "VFS/WANTED", "SINCE", "REASON"))
            if pfs else "  none managed (no policy, or it selects no PF)"]
    pools = [(name, p.get("total", 0), p.get("allocated", 0), p.get("unhealthy", 0))
             for name, p in snap.get("pools", {}).items()]
    out += ["", "DEVICE POOLS",
            tabulate(pools, headers=("RESOURCE", "TOTAL", "ALLOCATED", "UNHEALTHY"))
            if pools else "  none (device plugin off, or no pools configured)"]
    allocs = []
    for key, a in snap.get("allocations", {}).items():
        pod = f"{a['namespace']}/{a['pod']}" if a.get("namespace") and a.get("pod") else "-"
        ips = ",".join(a.get("ips") or []) or "-"
        allocs.append((pod, key, a.get("network") or "-", a.get("type") or "-",
                       a.get("device") or "-", ips))
    out += ["", "ALLOCATIONS",
            tabulate(allocs, headers=("POD", "ATTACHMENT", "NETWORK", "TYPE", "DEVICE", "IPS"))
            if allocs else "  none"]
    out += _policy_lines(snap.get("policy"), now)
    errors = [(_ago(e["time"], now), e["source"], e.get("object") or "-", e["message"])
              for e in snap.get("recentErrors", [])[-10:]]
    out += ["", "RECENT ERRORS",
            tabulate(errors, headers=("AGO", "SOURCE", "OBJECT", "MESSAGE"))
            if errors else "  none"]
    return "\n".join(out)


def _policy_lines(section: dict[str, Any] | None, now: float) -> list[str]:
    """NETWORK POLICY: the controller's sync state, each attachment's policies, bad policies."""
    if section is None:
        return []
    last = section.get("lastSync") or {}
    head = "  caches synced" if section.get("synced") else \
        "  caches NOT synced (new attachments fail closed)"
    if last:
        head += (f"; last sync {_ago(last.get('at'), now)} ago: {last.get('pods', 0)} pods in"
                 f" {float(last.get('seconds', 0)) * 1e3:.1f} ms, {last.get('applied', 0)}"
                 f" applied, {last.get('failed', 0)} failed")
    rows = [(a.get("pod") or "-", a.get("ifname") or "-", a.get("network") or "-",
             a.get("state") or "-", ",".join(a.get("policies") or []) or "-", a.get("rules", 0),
             a.get("error") or "-")
            for a in section.get("attachments", {}).values()]
    out = ["", "NETWORK POLICY", head]
    if rows:
        out.append(tabulate(rows, headers=("POD", "IFNAME", "NETWORK", "STATE", "POLICIES",
                                           "RULES", "ERROR")))
    out += [f"  API: {name}: {why}" for name, why in (section.get("apiErrors") or {}).items()]
    out += [f"  not enforced: {key}: {why}"
            for key, why in (section.get("policyErrors") or {}).items()]
    return out
