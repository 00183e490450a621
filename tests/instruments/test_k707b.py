"""Message-exact tests of the 707B TSP driver."""

import pytest
from scripted_transport import Scripted

from instruments import InstrumentError
from instruments.k707b import K707B, channel_name

CHECK = " waitcomplete() print(errorqueue.count)"


def test_identity_and_card():
    t = Scripted([("*IDN?", "Keithley Instruments Inc., Model 707B, 1234567, 1.0.0"),
                  ("print(slot[1].idn)", "7174A,8x12 Low Current Matrix")])
    k = K707B(t)
    assert k.idn().startswith("Keithley Instruments Inc., Model 707B")
    assert k.slot(1).idn().startswith("7174A")
    assert t.write_termination == "\n"


def test_switch_configuration_is_one_exclusiveclose_and_cached():
    sel = ["1A01", "1B09", "1C02", "1D10"]
    t = Scripted([
        ('channel.exclusiveclose("1A01,1B09,1C02,1D10")' + CHECK, "0.000000e+00"),
        ('print(channel.getclose("allslots"))', "1A01;1B09;1C02;1D10"),
        ('channel.open("allslots")' + CHECK, "0"),
        ('print(channel.getclose("allslots"))', "nil"),
    ])
    k = K707B(t)
    assert k.exclusive_close(sel) is True
    assert k.exclusive_close(reversed(sel)) is False      # same selection: nothing sent
    assert k.closed_channels() == ["1A01", "1B09", "1C02", "1D10"]
    k.open_all()
    assert k.closed_channels() == []
    assert t.done()


def test_error_queue_raises_with_command_and_reply():
    t = Scripted([
        ('channel.close("1A01")' + CHECK, "1.000000e+00"),
        ("print(errorqueue.next())", "-285\tTSP Syntax error\t2\t0"),
    ])
    with pytest.raises(InstrumentError) as e:
        K707B(t).close_channels(["1A01"])
    assert "-285" in str(e.value) and 'channel.close("1A01")' in str(e.value)


def test_bad_channel_names_send_nothing():
    t = Scripted()
    k = K707B(t)
    for bad in (["1I01"], ["7A01"], ["1A13"], ["A01"]):
        with pytest.raises(ValueError):
            k.exclusive_close(bad)
    with pytest.raises(ValueError):
        channel_name(1, "A", 0)
    assert t.sent == []
    assert channel_name(2, "c", 5) == "2C05"


def test_close_opens_every_relay():
    cmd = 'channel.open("allslots") waitcomplete() print(channel.getclose("allslots"))'
    t = Scripted([(cmd, "nil")])
    with K707B(t):
        pass
    assert t.sent == [cmd] and t.closed


def test_safe_state_retries_then_reports_relays_still_closed():
    cmd = 'channel.open("allslots") waitcomplete() print(channel.getclose("allslots"))'
    t = Scripted([(cmd, "1A01"), (cmd, "nil")])
    K707B(t).make_safe()  # one retry is enough
    t = Scripted([(cmd, "1A01"), (cmd, "1A01")])
    with pytest.raises(InstrumentError, match="not confirmed open"):
        K707B(t).make_safe()


def test_snapshot_reads_identity_cards_and_closed_relays():
    # `slot[n].idn` and `channel.getclose("allslots")`: instruments.md §5, dc-commands.md §3
    t = Scripted([("*IDN?", "Keithley Instruments Inc., Model 707B, 1, 1.7.0a"),
                  ("print(slot[1].idn)", "7174A,8x12"), ("print(slot[2].idn)", "7174A,8x12"),
                  ('print(channel.getclose("allslots"))', "1A01;2B03")])
    snap = K707B(t).snapshot(slots=[2, 1, 1])
    assert snap["cards"] == {"1": "7174A,8x12", "2": "7174A,8x12"}
    assert snap["closed"] == ["1A01", "2B03"] and t.done()


def test_a_failed_selection_is_not_trusted_afterwards():
    sel = 'channel.exclusiveclose("1A01,2B02")' + CHECK
    t = Scripted([(sel, "0"), ('channel.exclusiveclose("1A03")' + CHECK, "1"),
                  ("print(errorqueue.next())", "1115\tinvalid\t2\t0"), (sel, "0")])
    k = K707B(t)
    k.exclusive_close(["1A01", "2B02"])
    with pytest.raises(InstrumentError):
        k.exclusive_close(["1A03"])
    assert k.exclusive_close(["1A01", "2B02"]) is True   # re-sent: the state is unknown now
    assert t.done()
