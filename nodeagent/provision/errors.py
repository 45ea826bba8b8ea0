"""The error every provisioning step raises: its message is the PF's failure reason."""

from __future__ import annotations


class ProvisionError(Exception):
    pass
