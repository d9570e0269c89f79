"""`make vmtest`: the vm tier in two lanes side by side, at most two host VMs at a time
(each TCG VM keeps one of this machine's two cores busy).

- The VLAN lane: tests/vm/test_vlans.py, on a host VM of its own.
- The main lane: test_systemd_host.py, then test_two_hosts.py. Host b, which only the
  two-host tests need, boots once the VLAN lane has ended: the VLAN lane holds a lock,
  the gate, from its start to its exit.

Both lanes install one wheel, built here first. The main lane's output streams; the VLAN
lane's follows when both have ended. The exit status is the main lane's, or else the
VLAN lane's. Arguments go to both pytest runs. Run alone, a module is a session of its
own as before: `pytest tests/vm/test_vlans.py`.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .host import build_wheel

#: The wheel both lanes install (unset: each session builds its own).
WHEEL_ENV = "KVMHOOKS_VM_WHEEL"
#: A lock held while the lane beside this session runs: host b boots once it is free.
SECOND_HOST_GATE_ENV = "KVMHOOKS_VM_SECOND_HOST_GATE"

VLAN_LANE = ["tests/vm/test_vlans.py"]
MAIN_LANE = ["tests/vm/test_systemd_host.py", "tests/vm/test_two_hosts.py"]


def wait(process: subprocess.Popen) -> int:
    """Its exit status. A Ctrl-C reaches both lanes from the terminal: each cleans up its
    VMs, and is waited for rather than killed halfway."""
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            continue


def main(args: list[str]) -> int:
    pytest = [sys.executable, "-m", "pytest", *args]
    with tempfile.TemporaryDirectory(prefix="kvmhooks-vmtest-") as work_dir:
        work = Path(work_dir)
        wheel = build_wheel(work)
        env = dict(os.environ, **{WHEEL_ENV: str(wheel)})
        gate, log = work / "vlan-lane.lock", work / "vlan-lane.log"
        with open(gate, "w") as held, open(log, "wb") as output:
            fcntl.flock(held, fcntl.LOCK_EX)
            # The VLAN lane inherits the locked file; this process's copy closes below.
            vlan_lane = subprocess.Popen([*pytest, *VLAN_LANE], env=env, stdout=output,
                                         stderr=subprocess.STDOUT, pass_fds=(held.fileno(),))
        main_lane = subprocess.Popen([*pytest, *MAIN_LANE],
                                     env=dict(env, **{SECOND_HOST_GATE_ENV: str(gate)}))
        main_status, vlan_status = wait(main_lane), wait(vlan_lane)
        print(f"\n===== the VLAN lane ({' '.join(VLAN_LANE)}, a host VM of its own), "
              f"beside the main lane =====", flush=True)
        sys.stdout.write(log.read_text(errors="replace"))
    return main_status or vlan_status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
