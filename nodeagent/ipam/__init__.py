"""IP address management: allocation of pool offsets (IPs, VF indexes) from slot bitmaps."""
