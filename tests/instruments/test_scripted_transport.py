"""The scripted transport fails a test on any message its script does not expect."""

import pytest
from scripted_transport import Scripted


def test_unexpected_messages_fail():
    t = Scripted([("*IDN?", "X")])
    assert t.query("*IDN?") == "X" and t.done()
    with pytest.raises(AssertionError, match="after the script ended"):
        t.write("DV1,0,5,0.01")
    t = Scripted([("A", None)])
    with pytest.raises(AssertionError, match="script expected 'A'"):
        t.write("B")
