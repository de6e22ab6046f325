"""Connect's one error tree: a connector that cannot run says why in one line."""

from __future__ import annotations


class ConnectError(Exception):
    """A connector failed; the message names the connector and what to do."""


class ConnectorConfigError(ConnectError):
    """A ``[[connectors]]`` entry is unusable (unknown class, missing or bad key).

    The task exits with ``EXIT_CONFIG`` so the supervisor does not restart it in a loop."""


class BadRecord(ConnectError):
    """One record cannot be converted or transformed (``errors.tolerance`` decides)."""
