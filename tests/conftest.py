"""Shared fixtures: sysfs fixture trees and the inventory JSON schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tests.sysfs_tree import SysfsTree

SCHEMA = Path(__file__).resolve().parent.parent / "nodeagent" / "schemas" / "inventory.schema.json"


@pytest.fixture
def tree(tmp_path: Path) -> SysfsTree:
    return SysfsTree(tmp_path / "sys")


@pytest.fixture(scope="session")
def inventory_validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
