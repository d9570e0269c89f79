"""The kvmhooks test lab: what the tests, the demo and the benchmark share.

One module per job; import the module you need (this file imports nothing, so that
``tests.lab.domains`` stays free of root, libvirt and pyroute2 for the unit tests):

- ``cleanup``: the Cleanup registry (undo in reverse, also on failure)
- ``wait``: polling until something holds
- ``names``: unique names, MACs, uplink names, subnets out of 198.18.0.0/15
- ``links``: kernel links and namespaces, ping, marked links, host state
- ``nic``: the stand-in NIC (a veth whose peer is a LAN in a namespace)
- ``domains``: the one domain-XML builder (metadata, hook-owned and native interfaces)
- ``virt``: libvirt connection, define / start / destroy / undefine, live XML
- ``guest``: booting TCG guests that ping and report over their serial console
- ``lock``: the lab lock that system tests, the demo and the benchmark share
- ``daemons``: the kvmhooks agent, udev NIC-event handlers, libvirtd (its start time;
  stopped and started again), a guest's qemu frozen
- ``ruleflow``: what the udev rule and the NIC unit make of a NIC event, systemd's
  escaping included
- ``logcapture``: what kvmhooks logs to /dev/log
- ``commands``: the kvmhooks command line, the installed hooks, the state records
- ``config``: writing /etc/kvmhooks/kvmhooks.toml and putting the old one back
- ``leaks``: what the leak check in conftest.py looks for, and removing stale leftovers

Naming: every kernel link, network namespace and libvirt domain that the lab makes starts
with ``kt`` (``names.TEST_PREFIX``) so the leak check can find leftovers; kvmhooks' own
devices start with ``kh``. Addresses come only from 198.18.0.0/15, never eth0.
"""
