"""Fixtures for tests of the session: sessions on a small canvas, shut down after the test."""

from __future__ import annotations

import pytest

from studio.document import Document
from studio.session import Session

SIZE = 32  # canvas side for session tests: small enough for the real patch engine to run in a blink


@pytest.fixture
def make_session(qtbot):
    """Make sessions on a SIZE×SIZE canvas; each is shut down (its engine thread ended) afterwards."""
    sessions: list[Session] = []

    def make(engine, **kwargs) -> Session:
        kwargs.setdefault("document", Document(SIZE, SIZE))
        session = Session(engine, **kwargs)
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        assert session.shutdown(timeout=5)
        assert not session.host.is_alive()
