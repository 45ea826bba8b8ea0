#!/bin/sh
# Runs inside the lab VM (started by hw-lab/run.py through vng --exec).
#   boot.sh RUNDIR NETDEVSIM_KO PYTHON
# RUNDIR is the host directory shared read-write (request.json, pysnap.tar in; results out).
# Loads the drivers, unpacks the Python snapshot into RAM, then runs guest/main.py, whose output
# goes to the console and RUNDIR/output.log and whose exit status goes to RUNDIR/status.
set -u
rundir=$1 netdevsim_ko=$2 python=$3
here=$(cd "$(dirname "$0")" && pwd)
stamp() { echo "hw-lab guest: $* (uptime $(cut -d' ' -f1 /proc/uptime)s)"; }

stamp "booted $(uname -r)"
modprobe -a igb igbvf vfio-pci ipvlan 8021q dummy macvlan psample || { echo "modprobe failed" >&2; exit 90; }
grep -q '^netdevsim ' /proc/modules || insmod "$netdevsim_ko" || { echo "insmod $netdevsim_ko failed" >&2; exit 90; }
if command -v udevadm >/dev/null 2>&1; then udevadm settle --timeout=60; fi
stamp "drivers loaded"

snap=/run/hwlab-python
mkdir -p "$snap" && mount -t tmpfs -o size=1g hwlab-python "$snap" \
    && tar -xf "$rundir/pysnap.tar" -C "$snap" || { echo "cannot unpack the Python snapshot" >&2; exit 90; }
while read -r member target; do
    mount --bind "$snap/$member" "$target" || { echo "cannot bind $member on $target" >&2; exit 90; }
done < "$snap/mounts.txt"
stamp "python snapshot in RAM"

export PYTHONPATH="$snap/site" PYTHONDONTWRITEBYTECODE=1 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
{ "$python" "$here/main.py" "$rundir/request.json"; echo $? > "$rundir/status"; } 2>&1 \
    | tee "$rundir/output.log"
stamp "done"
exit "$(cat "$rundir/status" 2>/dev/null || echo 91)"
