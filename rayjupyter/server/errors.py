"""The one error the server extension's parts raise: an HTTP status and one line for the user."""

from __future__ import annotations


class ClusterError(Exception):
    """A request that is refused or cannot be carried out; the message names the fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
