"""Figures a and b inside the EL9-floor root: what `python -m bench` runs there as
`scripts/in-el9-floor python3 -m bench.floor`, with a job (JSON) on stdin, printing the
samples (JSON) on stdout.

This process does the timing from inside the root, so the chroot's set-up is in no sample.
It times the floor's own `python3 -c pass` and the qemu hook as `kvmhooks install` writes
it for the floor's Python (a shell shim running hookclient.py with `python3 -I -S`); for
figure b, an agent of the floor's own (`python3 -m kvmhooks agent`) serves that hook. Both
keep their state and read their config in a directory of this process's private /tmp, so
the host's agent, its /run/kvmhooks and its config take no part; the config is the one the
host's figure b ran with, naming the same uplink. The agent dies with this process.

Job: {"figure": "a" or "b", "rounds": N, "name": DOMAIN, "xml": DOMAIN XML,
      "devices": [the devices prepare builds] (b), "config": TOML text (b)}
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from bench import timing
from kvmhooks.hookclient import AGENT_SOCKET
from kvmhooks.install import HOOK_PATH, install

PR_SET_PDEATHSIG = 1
AGENT_START_TIMEOUT = 30.0


def _dies_with(parent: int):
    """For the agent, before exec: the kernel sends it SIGTERM when parent ends, however
    it ends (and it leaves at once if parent has ended already)."""
    def arm() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)
    return arm


@contextlib.contextmanager
def floor_agent(env: dict, log_path: str):
    """`python3 -m kvmhooks agent` listening in env's state directory, stopped on exit."""
    with open(log_path, "wb") as log:
        agent = subprocess.Popen([sys.executable, "-m", "kvmhooks", "agent"],
                                 env={**os.environ, **env},  # PYTHONPATH: this tree
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 preexec_fn=_dies_with(os.getpid()))
    try:
        _wait_until_listening(agent, os.path.join(env["KVMHOOKS_STATE_DIR"], AGENT_SOCKET),
                              log_path)
        yield agent
        if agent.poll() is not None:
            raise RuntimeError(f"the floor's agent ended during the run: {_tail(log_path)}")
    finally:
        agent.terminate()
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


def _wait_until_listening(agent: subprocess.Popen, path: str, log_path: str) -> None:
    deadline = time.monotonic() + AGENT_START_TIMEOUT
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise RuntimeError(f"the floor's agent exited with status {agent.returncode}: "
                               f"{_tail(log_path)}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
                return
            except OSError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"the floor's agent did not listen on {path} within "
                       f"{AGENT_START_TIMEOUT:g} s: {_tail(log_path)}")


def _tail(path: str) -> str:
    with open(path, "rb") as stream:
        return stream.read()[-2000:].decode(errors="replace").strip() or "(no output)"


def run(job: dict) -> dict:
    work = tempfile.mkdtemp(prefix="kvmhooks-bench-")  # 0700, in this root's private /tmp
    try:
        # The hook gets what libvirt gives it, PATH, and where the state is.
        env = {"PATH": os.environ["PATH"],
               "KVMHOOKS_STATE_DIR": os.path.join(work, "state"),
               "KVMHOOKS_CONFIG": os.path.join(work, "kvmhooks.toml")}
        install(root=os.path.join(work, "root"))
        hook = os.path.join(work, "root", HOOK_PATH.format(kind="qemu"))
        python, name, xml = sys.executable, job["name"], job["xml"].encode()
        result = {"versions": timing.versions(), "python": python}
        if job["figure"] == "a":
            result["samples"] = timing.noop_calls(python, hook, name, xml, job["rounds"],
                                                  env)
            return result
        with open(env["KVMHOOKS_CONFIG"], "w", encoding="utf-8") as stream:
            stream.write(job["config"])
        os.chmod(env["KVMHOOKS_CONFIG"], 0o644)
        with floor_agent(env, os.path.join(work, "agent.log")):
            result["samples"] = timing.prepares(python, hook, name, xml, job["devices"],
                                                job["rounds"], env)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    try:
        result = run(json.load(sys.stdin))
    except (timing.CallFailed, RuntimeError, OSError) as error:
        print(f"bench.floor: {error}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
