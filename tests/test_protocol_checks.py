"""The protocol's list checks take a whole-list shortcut (a few passes in C) before falling back
to item by item: the shortcut must accept exactly the lists the item checks accept, and a refused
list must name its first bad item. Exchange ops travel as columns (protocol version 3)."""
import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxlsim.errors import ProtocolError
from cxlsim.pool import protocol as P

# values near every checker's edges: bools (not ints here), negatives, huge ints, non-finite
# floats, empty and long strings
VALUES = st.one_of(st.integers(-3, 3), st.integers(P.U64_MAX - 2, P.U64_MAX + 2),
                   st.booleans(), st.floats(allow_nan=True), st.sampled_from([-0.0, 0.0, 1.5]),
                   st.text(max_size=10), st.none())
CHECKERS = {"key": P.KEY, "size": P.SIZE, "finite": P.finite, "boolean": P.boolean,
            "kind": P.OP_KIND}


def _item_ok(check, value) -> bool:
    try:
        check(value, "x")
        return True
    except ProtocolError:
        return False


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(CHECKERS)), st.lists(VALUES, max_size=6))
def test_whole_list_shortcut_agrees_with_item_checks(which, values):
    check = CHECKERS[which]
    lists = P.list_of(check)
    expect = all(_item_ok(check, v) for v in values)
    try:
        lists(values, "f")
        accepted = True
    except ProtocolError as exc:
        accepted = False
        first_bad = next(i for i, v in enumerate(values) if not _item_ok(check, v))
        assert f"f[{first_bad}]" in str(exc)
    assert accepted == expect, (which, values)


def _exchange(ops):
    header = msgpack.packb({"v": P.VERSION, "id": 7, "cmd": "exchange",
                            "args": {"quantum": 3, "ops": ops, "next_ns": None}})
    return P.decode_request([header])


def test_exchange_ops_as_columns():
    ops = [[1.0, 2.5], [0, 1], ["put", "touch"], [11, 12], [4096, 0], [True, True]]
    req_id, cmd, args, data = _exchange(ops)
    assert (req_id, cmd, data) == (7, "exchange", [])
    assert args["ops"] == ops


@pytest.mark.parametrize("ops, named", [
    ([[1.0, 2.0], [0], ["put"], [1], [1], [True]], "columns must have one length"),
    ([[1.0, math.inf], [0, 1], ["put"] * 2, [1, 2], [1, 1], [True] * 2], "exchange.ops[0][1]"),
    ([[1.0], [0], [""], [1], [1], [True]], "exchange.ops[2][0]"),
    ([[1.0], [0], ["put"], [-1], [1], [True]], "exchange.ops[3][0]"),
    ([[1.0], [0], ["put"], [1], [1], [1]], "exchange.ops[5][0]"),
    ([[1.0], [0], ["put"], [1], [1]], "exchange.ops: expected a list of 6 items"),
])
def test_bad_exchange_columns_are_named(ops, named):
    with pytest.raises(ProtocolError) as err:
        _exchange(ops)
    assert named in str(err.value)
    assert err.value.req_id == 7          # so the error reply can carry the request's id


@pytest.mark.parametrize("release", [None, [1, 2.0], [-1, 1e6, None], [1, "x", None],
                                     [1, float("nan"), None], [True, 1e6, None], [1, -1.0, None],
                                     {"quantum": 1}])
def test_a_bad_release_in_a_notice_is_named(release):
    notice = {"id": None, "ok": True, "result": {"soon": 4, "release": release}}
    with pytest.raises(ProtocolError, match="soon notice's release"):
        P.notice_release(notice)


def test_a_notice_carries_its_release_through_msgpack():
    from cxlsim.pool.api import Release
    raw = P.encode_soon_notice(4, Release(9, 6e6, math.inf))
    msg = P.decode_reply(raw)
    assert P.is_soon_notice(msg, 4) and not P.is_soon_notice(msg, 9)
    assert P.notice_release(msg) == (9, 6e6, math.inf)
