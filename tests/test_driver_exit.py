"""A script's end: what its fire-and-forget tasks print reaches the terminal first (as in
Ray), within a bounded wait, and the cluster it started goes with it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import rayjupyter as rj
    rj.init(num_cpus=2)

    @rj.remote
    def shout(i):
        import time
        time.sleep(0.3)
        print("hello from task", i, flush=True)

    @rj.remote
    def forever():
        import time
        time.sleep(600)

    for i in range(3):
        shout.remote(i)
    if FOREVER:
        forever.remote()
    """
)


def _run(forever: bool, wait_s: str) -> subprocess.CompletedProcess[str]:
    """Run the script; it must end well before its forever task would (TimeoutExpired)."""
    env = dict(os.environ, RAYJUPYTER_EXIT_WAIT_S=wait_s)
    return subprocess.run(
        [sys.executable, "-c", f"FOREVER = {forever}\n" + SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_prints_of_fire_and_forget_tasks_arrive_before_the_script_ends():
    out = _run(forever=False, wait_s="30")
    assert out.returncode == 0, out.stderr
    lines = sorted(line.split(") ", 1)[1] for line in out.stdout.splitlines() if ") " in line)
    assert lines == [f"hello from task {i}" for i in range(3)], out.stdout + out.stderr


def test_the_wait_at_exit_is_bounded():
    out = _run(forever=True, wait_s="2")  # its forever task would hold it 600 s
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("hello from task") == 3, out.stdout + out.stderr


def test_a_forked_child_ending_leaves_its_parents_cluster_alone():
    script = textwrap.dedent(
        """
        import os, sys
        import rayjupyter as rj
        rj.init(num_cpus=1)
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # the child's exit runs atexit hooks: they must not touch the cluster
        os.waitpid(pid, 0)

        @rj.remote
        def alive():
            return "still up"

        print(rj.get(alive.remote(), timeout=30), flush=True)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "still up", out.stdout + out.stderr
