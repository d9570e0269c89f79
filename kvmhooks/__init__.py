"""kvmhooks: host networking that follows KVM guests, from their libvirt metadata.

Kept empty of imports: the qemu hook's no-op calls must not pay for them.
"""

__version__ = "0.1.0"
