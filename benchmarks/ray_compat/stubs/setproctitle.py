"""Stand-in for ``setproctitle`` where it is not installed (Ray's tests import it at the
top of the file); used on both sides alike, so a test that checks the title fails on both."""


def getproctitle() -> str:
    with open("/proc/self/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode().strip()


def setproctitle(title: str) -> None:
    """Not supported by the stand-in."""
