"""Where the daemon's pools come from, re-read when they change: ``config.json`` and the policy.

Both files are polled by stat signature (inode, size, mtime), which also catches a ConfigMap
update (the kubelet swaps a symlink). A file that turns invalid, or disappears, leaves the last
good version in force; an invalid ``config.json`` is recorded on the StatusBoard (the policy's
errors are the reconciler's to report).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from deviceplugin import config as dp_config
from deviceplugin.config import ConfigError, PluginConfig
from deviceplugin.policypools import resource_names
from nodeagent.fileio import Signature, signature
from nodeagent.provision import policy as node_policy
from nodeagent.provision.policy import Policy, PolicyError
from nodeagent.status import StatusBoard

log = logging.getLogger(__name__)

OnChange = Callable[[PluginConfig, Policy | None], None]


class PluginSources:
    """The current ``config.json`` and policy; :meth:`check` re-reads whichever changed."""

    def __init__(self, config_path: Path | None, policy_path: Path | None, *,
                 status: StatusBoard | None = None, interval: float = 1.0) -> None:
        self.config_path = config_path
        self.policy_path = policy_path
        self.status = status
        self.interval = interval
        self.config = PluginConfig(())
        self.policy: Policy | None = None
        self.config_loaded = False  # a valid config.json has been read
        self._signatures: dict[str, Signature | None] = {"config": None, "policy": None}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def wanted(self) -> bool:
        """Something to serve: a config.json, or policy entries with a resourceName."""
        return self.config_loaded or bool(resource_names(self.policy))

    def check(self) -> bool:
        """Re-read changed files; True when the pools' sources changed."""
        changed = self._check_config()
        return self._check_policy() or changed

    def _check_config(self) -> bool:
        current = signature(self.config_path)
        if current == self._signatures["config"]:
            return False
        self._signatures["config"] = current
        if current is None:
            if self.config_loaded:
                log.warning("device plugin config %s is missing; keeping its pools",
                            self.config_path)
            return False
        assert self.config_path is not None
        try:
            config = dp_config.load(self.config_path)
        except (ConfigError, OSError) as exc:
            message = f"device plugin config not applied, keeping the pools in force: {exc}"
            log.error("%s", message)
            if self.status is not None:
                self.status.error("deviceplugin", message, str(self.config_path))
            return False
        log.info("device plugin config %s loaded: %d resources", self.config_path,
                 len(config.resources))
        self.config, self.config_loaded = config, True
        return True

    def _check_policy(self) -> bool:
        current = signature(self.policy_path)
        if current == self._signatures["policy"]:
            return False
        self._signatures["policy"] = current
        if current is None:
            return False
        assert self.policy_path is not None
        try:
            policy = node_policy.load(self.policy_path)
        except PolicyError as exc:
            log.warning("policy pools unchanged: %s", exc)
            return False
        unchanged = _pool_fields(policy) == _pool_fields(self.policy)
        self.policy = policy
        return not unchanged  # an edit that does not touch the pools changes nothing here

    def start(self, on_change: OnChange) -> None:
        """Poll every ``interval`` on a thread; ``on_change(config, policy)`` after changes."""

        def run() -> None:
            while not self._stop.wait(self.interval):
                try:
                    if self.check():
                        on_change(self.config, self.policy)
                except Exception:  # a bug must not end the thread
                    log.exception("device plugin config reload failed")

        self._thread = threading.Thread(target=run, name="deviceplugin-config", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _pool_fields(policy: Policy | None) -> object:
    """What policy pools depend on: selectors, VF counts, groups, drivers and names."""
    if policy is None:
        return None
    return (policy.resource_prefix,
            tuple((p.selector, p.num_vfs, p.resource_name, p.defaults.driver,
                   tuple((g.vfs, g.settings.driver, g.resource_name) for g in p.groups))
                  for p in policy.pfs))
