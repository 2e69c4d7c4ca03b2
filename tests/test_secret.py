import logging
import pickle

import pytest

from rxvoice.secret import Secret


def test_secret_never_shows_its_value(caplog):
    s = Secret("hunter2-token")
    assert "hunter2" not in repr(s)
    assert "hunter2" not in str(s)
    assert "hunter2" not in f"{s} {s!r}"
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("x").warning("token=%s %r", s, s)
    assert "hunter2" not in caplog.text
    assert s.reveal() == "hunter2-token"
    assert s == Secret("hunter2-token")
    with pytest.raises(TypeError):
        pickle.dumps(s)
