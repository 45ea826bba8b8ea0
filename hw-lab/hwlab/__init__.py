"""hw-lab: the SR-IOV hardware lab (virtual in QEMU, or real PFs named by an inventory)."""
