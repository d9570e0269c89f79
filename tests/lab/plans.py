"""For tests that plan and apply through the engine themselves, without libvirt or hooks:
the tagged domain they plan for, parsed as the hooks parse it, whose per-guest devices are
removed at cleanup."""

from __future__ import annotations

from kvmhooks.domain import Domain, parse_domain

from .cleanup import Cleanup
from .domains import Iface, domain_xml
from .links import delete_link_later
from .names import unique_name


def planned_domain(cleanup: Cleanup, ifaces: list[Iface]) -> Domain:
    for iface in ifaces:
        delete_link_later(cleanup, iface.hook_owned_dev)
    return parse_domain(domain_xml(unique_name("kt-dom-"), ifaces))
