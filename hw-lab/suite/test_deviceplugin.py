"""The device plugin on real VFs: pools from the emulated PFs, a real /dev/vfio/<group>, and a
VF removed in the kernel leaving ListAndWatch, all without a restart.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from hwlab.guard import PF
from hwlab.sysfs import Sysfs as LabSysfs
from pyroute2 import IPRoute

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from deviceplugin.config import parse  # noqa: E402
from deviceplugin.manager import DevicePluginManager  # noqa: E402
from nodeagent.sysfs import Sysfs  # noqa: E402
from nodeagent.watch import LiveInventory  # noqa: E402
from tests.kubelet_standin import PB2, Kubelet, plugin  # noqa: E402

WAIT = 30.0


def test_pools_follow_real_vfs(pf_pair: tuple[PF, PF], make_vfs: Callable,
                               sysfs: LabSysfs) -> None:
    pf = pf_pair[0]  # up, with carrier from its cabled peer: its VFs are healthy
    vfs = make_vfs(pf, 2)
    sysfs.bind(vfs[1].pci, "vfio-pci")
    group = os.path.basename(os.readlink(f"/sys/bus/pci/devices/{vfs[1].pci}/iommu_group"))
    config = parse({"resourceList": [
        {"resourceName": "lab_netdev", "selectors": {"drivers": [pf.spec.vf_driver],
                                                     "pfNames": [pf.netdev]}},
        {"resourceName": "lab_vfio", "selectors": {"drivers": ["vfio-pci"],
                                                   "pfNames": [pf.netdev]}},
    ]})
    inventory = LiveInventory(Sysfs("/sys"))
    inventory.start()
    with tempfile.TemporaryDirectory(prefix="nahwdp") as plugin_dir:
        kubelet = Kubelet(Path(plugin_dir))
        kubelet.start()
        manager = DevicePluginManager(config, plugin_dir)
        try:
            manager.attach(inventory)
            assert set(kubelet.registered(2, timeout=WAIT)) == {"intel.com/lab_netdev",
                                                                "intel.com/lab_vfio"}

            channel, stub = plugin(Path(plugin_dir), "intel.com/lab_vfio")
            with channel:
                response = stub.Allocate(PB2.AllocateRequest(container_requests=[
                    PB2.ContainerAllocateRequest(devices_ids=[vfs[1].pci])]), timeout=WAIT)
            (container,) = response.container_responses
            paths = {d.host_path for d in container.devices}
            assert paths == {"/dev/vfio/vfio", f"/dev/vfio/{group}"}
            assert all(os.path.exists(p) for p in paths), "the kernel made these device nodes"
            assert container.envs["PCIDEVICE_INTEL_COM_LAB_VFIO"] == vfs[1].pci

            channel, stub = plugin(Path(plugin_dir), "intel.com/lab_netdev")
            with channel:
                stream = stub.ListAndWatch(PB2.Empty(), timeout=WAIT * 2)
                first = next(stream)
                assert [(d.ID, d.health) for d in first.devices] == [(vfs[0].pci, "Healthy")]
                assert [n.ID for n in first.devices[0].topology.nodes] == [pf.spec.numa_node]

                with IPRoute() as ipr:  # the PF's link goes down: its VFs are unhealthy
                    ipr.link("set", index=ipr.link_lookup(ifname=pf.netdev)[0], state="down")
                update = next(stream)
                assert [(d.ID, d.health) for d in update.devices] == [(vfs[0].pci, "Unhealthy")]

                sysfs.set_numvfs(pf.pci, 0)  # the kernel removes the VFs
                update = next(stream)
                while update.devices:
                    update = next(stream)
                assert list(update.devices) == []
        finally:
            manager.stop()
            kubelet.stop()
            inventory.stop()
