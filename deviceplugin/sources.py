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
from nodeagent.fileio import WatchedFile
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
        self._config = WatchedFile(config_path, dp_config.load, (ConfigError, OSError),
                                   self._config_error)
        # The policy's errors are the reconciler's to report: here only a log line.
        self._policy = WatchedFile(policy_path, node_policy.load, (PolicyError,),
                                   lambda exc: log.warning("policy pools unchanged: %s", exc))
        self.policy: Policy | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def config(self) -> PluginConfig:
        return self._config.value or PluginConfig(())

    @property
    def config_loaded(self) -> bool:
        """A valid config.json has been read."""
        return self._config.value is not None

    @property
    def wanted(self) -> bool:
        """Something to serve: a config.json, or policy entries with a resourceName."""
        return self.config_loaded or bool(resource_names(self.policy))

    def check(self) -> bool:
        """Re-read changed files; True when the pools' sources changed."""
        changed = self._config.check()
        if changed:
            log.info("device plugin config %s loaded: %d resources", self.config_path,
                     len(self.config.resources))
        if self._policy.check():
            policy = self._policy.value
            # an edit that does not touch the pools changes nothing here
            changed |= _pool_fields(policy) != _pool_fields(self.policy)
            self.policy = policy
        return changed

    def _config_error(self, exc: Exception) -> None:
        message = f"device plugin config not applied, keeping the pools in force: {exc}"
        log.error("%s", message)
        if self.status is not None:
            self.status.error("deviceplugin", message, str(self.config_path))

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
