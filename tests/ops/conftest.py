"""Fixtures of the operating tests (the servers come from tests/conftest.py)."""

import pytest

from tests.ops.helpers import NotifySocket


@pytest.fixture
def notify_socket(tmp_path):
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    yield sock
    sock.close()
