"""The spans a client keeps of its valid block_buffers views (cxlsim/pool/spans.py) answer as a
plain list of spans scanned one by one would, whatever the order of runs added and cuts made."""
from hypothesis import given, settings, strategies as st

from cxlsim.pool.spans import Spans

ROOM = 200

ops = st.lists(st.one_of(
    st.tuples(st.just("run"), st.integers(0, ROOM - 1), st.lists(st.integers(1, 30), min_size=1,
                                                                  max_size=5)),
    st.tuples(st.just("cut"), st.integers(0, ROOM + 150), st.integers(1, 60)),
    st.tuples(st.just("holds"), st.integers(0, ROOM + 150), st.integers(1, 40)),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_spans_answer_as_a_scan_of_every_span(steps):
    spans, model = Spans(), []
    for kind, start, arg in steps:
        if kind == "run":             # as block_buffers: cut what the run covers, then add it
            bounds = [start]
            for n in arg:
                bounds.append(bounds[-1] + n)
            spans.cut(bounds[0], bounds[-1])
            model = [v for v in model if v[1] <= bounds[0] or bounds[-1] <= v[0]]
            spans.add_run(bounds)
            model += list(zip(bounds, bounds[1:]))
        elif kind == "cut":
            spans.cut(start, start + arg)
            model = [v for v in model if v[1] <= start or start + arg <= v[0]]
        else:
            want = any(a <= start and start + arg <= b for a, b in model)
            assert spans.holds(start, start + arg) == want
        assert list(spans) == sorted(model)        # the very spans, ends included
    for a, b in model:                             # each holds itself and not a byte more
        assert spans.holds(a, b) and not spans.holds(a, b + 1)
