"""The only module that imports pyudev: udev properties of network devices."""

from __future__ import annotations

import pyudev


def id_paths() -> dict[str, str]:
    """Interface name -> udev ID_PATH, for every network device that has one."""
    context = pyudev.Context()
    return {device.sys_name: device.properties["ID_PATH"]
            for device in context.list_devices(subsystem="net")
            if "ID_PATH" in device.properties}


def net_events():
    """(action, interface name, DEVTYPE) for every udev event on a network device."""
    context = pyudev.Context()
    monitor = pyudev.Monitor.from_netlink(context)
    monitor.filter_by("net")
    for device in iter(monitor.poll, None):
        yield device.action, device.sys_name, device.get("DEVTYPE")
