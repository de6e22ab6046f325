"""The worker-host fixture of tests/integration/test_worker.py, for the tests here."""

from tests.integration.test_worker import workers  # noqa: F401
