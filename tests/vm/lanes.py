"""`make vmtest`: the vm tier in two lanes side by side, at most two host VMs at a time
(each TCG VM keeps one of this machine's two cores busy).

- The main lane: test_systemd_host.py, test_vlans.py, then test_two_hosts.py. Host b,
  which only the two-host tests need, boots once the side lane has ended: the side lane
  holds a lock, the gate, from its start to its exit.
- The side lane: test_uplink_owned_by_networkmanager.py and two tests of
  test_systemd_host.py (EVENED_OUT), on a host VM of its own. It takes about as long as
  the main lane's part before the two-host tests, so that host b is up when they begin.

Both lanes install one wheel, built here first. The main lane's output streams; the side
lane's follows when both have ended. The exit status is the main lane's, or else the
side lane's. Arguments go to both pytest runs. Run alone, a module is a session of its
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

SYSTEMD_HOST = "tests/vm/test_systemd_host.py"
#: Tests of the main lane's first module run in the side lane instead, to even the lanes
#: out: measured on 3 December, the main lane's part before the two-host tests took 15
#: minutes and the side lane's module 8; these two took 3.5 of them.
EVENED_OUT = [f"{SYSTEMD_HOST}::test_stopping_the_agent_mid_run_never_fails_a_guest_operation",
              f"{SYSTEMD_HOST}::test_a_vlan_uplinks_guests_come_back_after_its_parent_flaps"]
MAIN_LANE = [SYSTEMD_HOST, *(f"--deselect={test}" for test in EVENED_OUT),
             "tests/vm/test_vlans.py", "tests/vm/test_two_hosts.py"]
SIDE_LANE = ["tests/vm/test_uplink_owned_by_networkmanager.py", *EVENED_OUT]


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
        gate, log = work / "side-lane.lock", work / "side-lane.log"
        with open(gate, "w") as held, open(log, "wb") as output:
            fcntl.flock(held, fcntl.LOCK_EX)
            # The side lane inherits the locked file; this process's copy closes below.
            side_lane = subprocess.Popen([*pytest, *SIDE_LANE], env=env, stdout=output,
                                         stderr=subprocess.STDOUT, pass_fds=(held.fileno(),))
        main_lane = subprocess.Popen([*pytest, *MAIN_LANE],
                                     env=dict(env, **{SECOND_HOST_GATE_ENV: str(gate)}))
        main_status, side_status = wait(main_lane), wait(side_lane)
        print("\n===== the side lane (a host VM of its own), beside the main lane =====",
              flush=True)
        sys.stdout.write(log.read_text(errors="replace"))
    return main_status or side_status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
