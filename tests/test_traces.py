"""Tests of cxlsim.traces: readers, block keys, generator, and the real public traces."""
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxlsim.errors import TraceError
from cxlsim.traces import (Request, mooncake_key, mooncake_keys, open_trace, read_azure,
                           read_mooncake, read_token_ids, reuse_ratio, synthesize,
                           token_block_keys, trace_arrays, write_mooncake)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "traces"


def real(name: str) -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/traces not present: real public traces are not shipped with the repo")
    return SHARED / name


def write_lines(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def moon(ts=0, n_in=1000, n_out=10, ids=None):
    return {"timestamp": ts, "input_length": n_in, "output_length": n_out,
            "hash_ids": list(range(math.ceil(n_in / 512))) if ids is None else ids}


def expect_error(reader, path: Path, line: int, field: str, *, words=()):
    with pytest.raises(TraceError) as err:
        list(reader(path))
    msg = str(err.value)
    assert msg.startswith(f"{path}:{line}: {field}: "), msg
    for w in words:
        assert w in msg, msg
    return msg


# ---------------------------------------------------------------- Mooncake

def test_mooncake_good(tmp_path):
    p = write_lines(tmp_path / "t.jsonl", [moon(0, 1000, 5, [0, 1]), "", moon(7, 512, 3, [0]), moon(7, 0, 1, [])])
    rs = list(read_mooncake(p))
    assert [r.request_id for r in rs] == [0, 1, 2]
    assert rs[0] == Request(0, 0.0, 1000, 5, (mooncake_key(0), mooncake_key(1)), 512)
    assert rs[1].arrival_ms == 7.0 and rs[1].block_keys == (mooncake_key(0),)
    assert rs[2].block_keys == () and rs[2].session == -1


@pytest.mark.parametrize("rows, line, field, words", [
    ([moon(), "{not json"], 2, "json", ["invalid JSON"]),
    ([moon(), "[1, 2]"], 2, "json", ["expected an object"]),
    ([{"timestamp": 0, "input_length": 10, "hash_ids": [0]}], 1, "output_length", ["missing"]),
    ([moon(), moon(ids="x")], 2, "hash_ids", ["non-negative integers", "'x'"]),
    ([moon(n_in=600, ids=[0, "x"])], 1, "hash_ids", ["'x'"]),
    ([moon(n_in=600, ids=[0, -1])], 1, "hash_ids", ["-1"]),
    ([moon(n_in=600, ids=[0, 1.5])], 1, "hash_ids", ["1.5"]),
    ([moon(n_out=-3)], 1, "output_length", ["negative", "-3"]),
    ([moon(n_out=True)], 1, "output_length", ["True"]),
    ([moon(n_in="100", ids=[0])], 1, "input_length", ["'100'"]),
    ([moon(ts=-1)], 1, "timestamp", ["negative"]),
    ([moon(ts="now")], 1, "timestamp", ["'now'"]),
    ([moon(ts=5), moon(ts=9), moon(ts=8)], 3, "timestamp", ["backwards"]),
    ([moon(), moon(n_in=1025, ids=[0, 1])], 2, "hash_ids", ["ceil(input_length / 512)", "= 3"]),
])
def test_mooncake_bad(tmp_path, rows, line, field, words):
    expect_error(read_mooncake, write_lines(tmp_path / "t.jsonl", rows), line, field, words=words)


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_files(tmp_path, text):
    for reader, name in [(read_mooncake, "e.jsonl"), (read_token_ids, "e.jsonl"), (read_azure, "e.csv")]:
        p = tmp_path / name
        p.write_text(text)
        expect_error(reader, p, 1, "file", words=["no requests"])
    (tmp_path / "h.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    expect_error(read_azure, tmp_path / "h.csv", 1, "file")


def test_mooncake_error_after_a_chunk(tmp_path):
    # the reader converts keys in chunks; an error far in still names the right line
    rows = [moon(ts=i) for i in range(5000)] + [moon(ts=4999, n_out=-1)]
    expect_error(read_mooncake, write_lines(tmp_path / "t.jsonl", rows), 5001, "output_length")


# ---------------------------------------------------------------- Azure

AZ_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens"


def write_csv(path: Path, rows, head=AZ_HEAD, eol="\r\n") -> Path:
    path.write_bytes(eol.join([head, *rows]).encode() + eol.encode())
    return path


def test_azure_good(tmp_path):
    p = write_csv(tmp_path / "a.csv", ["2023-11-16 18:15:46.6805900,374,44",
                                       "2023-11-16 18:15:50.9951691,396,109",
                                       "2023-11-16 18:16:00,5,0"])
    rs = list(read_azure(p))
    assert [r.arrival_ms for r in rs] == [0.0, pytest.approx(4314.5791), pytest.approx(13319.41)]
    assert [(r.input_tokens, r.output_tokens, r.block_keys) for r in rs] == [(374, 44, ()), (396, 109, ()), (5, 0, ())]


@pytest.mark.parametrize("rows, line, field, words", [
    (["2023-11-16 18:15:46.6805900,374,44", "yesterday,1,1"], 3, "TIMESTAMP", ["'yesterday'"]),
    (["2023-11-16 18:15:46.6805900,-4,44"], 2, "ContextTokens", ["negative"]),
    (["2023-11-16 18:15:46.6805900,4,4.5"], 2, "GeneratedTokens", ["'4.5'"]),
    (["2023-11-16 18:15:46.6805900,4,4", "2023-11-16 18:15:46.6805899,4,4"], 3, "TIMESTAMP", ["backwards"]),
    (["2023-11-16 18:15:46.6805900,4"], 2, "row", ["expected 3 fields, got 2"]),
])
def test_azure_bad(tmp_path, rows, line, field, words):
    expect_error(read_azure, write_csv(tmp_path / "a.csv", rows), line, field, words=words)


def test_azure_bad_header(tmp_path):
    p = write_csv(tmp_path / "a.csv", ["2023-11-16 18:15:46.6805900,4,4"], head="TIMESTAMP,Context,GeneratedTokens")
    expect_error(read_azure, p, 1, "ContextTokens", words=["missing from header"])


def test_azure_prefix_models(tmp_path):
    p = write_csv(tmp_path / "a.csv", ["2023-11-16 18:15:46.0,2000,1", "2023-11-16 18:15:47.0,2000,1",
                                       "2023-11-16 18:15:48.0,300,1"])
    with pytest.raises(ValueError, match="none.*shared-system-prompt"):
        list(read_azure(p, prefix_model="magic"))
    a, b, c = read_azure(p, prefix_model="shared-system-prompt:1100")
    assert len(a.block_keys) == 4 and a.block_keys[:2] == b.block_keys[:2]  # 2 whole blocks shared
    assert not set(a.block_keys[2:]) & set(b.block_keys)                     # the rest is private
    assert len(c.block_keys) == 1 and c.block_keys[0] not in a.block_keys    # partial block: private


# ---------------------------------------------------------------- token ids

def tok(ns, ids, out=3):
    return {"input_toks": len(ids), "output_toks": out, "arrival_time_ns": ns,
            "input_tok_ids": ids, "output_tok_ids": list(range(out))}


def test_token_ids_good(tmp_path):
    p = write_lines(tmp_path / "s.jsonl", [tok(1_500_000, list(range(40))), tok(2_000_000, list(range(32)) + [7])])
    a, b = read_token_ids(p, block_tokens=16)
    assert a.arrival_ms == 1.5 and b.arrival_ms == 2.0
    assert (a.input_tokens, a.output_tokens, a.block_tokens) == (40, 3, 16)
    assert len(a.block_keys) == 3 and a.block_keys[:2] == b.block_keys[:2] and a.block_keys[2] != b.block_keys[2]
    assert a.block_keys == token_block_keys(list(range(40)), 16)


@pytest.mark.parametrize("row, field, words", [
    ({**tok(0, [1, 2, 3]), "input_toks": 4}, "input_tok_ids", ["has 3 ids but input_toks = 4"]),
    ({**tok(0, [1, 2, 3]), "output_toks": 4}, "output_tok_ids", ["has 3 ids"]),
    (tok(0, [1, 2 ** 31]), "input_tok_ids", [str(2 ** 31)]),
    ({k: v for k, v in tok(0, [1]).items() if k != "arrival_time_ns"}, "arrival_time_ns", ["missing"]),
])
def test_token_ids_bad(tmp_path, row, field, words):
    p = write_lines(tmp_path / "s.jsonl", [tok(0, [5]), row])
    expect_error(read_token_ids, p, 2, field, words=words)


@settings(max_examples=60, deadline=None)
@given(block=st.integers(1, 24), k=st.integers(0, 5), data=st.data())
def test_token_chaining_shares_exactly_k_keys(block, k, data):
    ints = st.integers(0, 2 ** 31 - 1)
    prefix = data.draw(st.lists(ints, min_size=k * block, max_size=k * block))
    tail_a = data.draw(st.lists(ints, min_size=1, max_size=3 * block))
    tail_b = data.draw(st.lists(ints, min_size=1, max_size=3 * block).filter(lambda t: t[0] != tail_a[0]))
    ka = token_block_keys(prefix + tail_a, block)
    kb = token_block_keys(prefix + tail_b, block)
    assert ka[:k] == kb[:k] and len(set(ka) & set(kb)) == k
    assert all(0 < x < 2 ** 64 for x in ka)


# ---------------------------------------------------------------- keys, detection, arrays

@given(st.lists(st.integers(0, 2 ** 64 - 2), unique=True, max_size=50))
def test_mooncake_keys_bijective_nonzero(ids):
    keys = [mooncake_key(i) for i in ids]
    assert len(set(keys)) == len(ids) and 0 not in keys
    assert mooncake_keys(np.array(ids, dtype=np.uint64)).tolist() == keys


def test_open_trace_detects(tmp_path):
    m = write_lines(tmp_path / "m.jsonl", [moon()])
    t = write_lines(tmp_path / "t.json", [tok(0, [1, 2])])
    a = write_csv(tmp_path / "a.csv", ["2023-11-16 18:15:46.0,1,1"])
    assert len(next(open_trace(m)).block_keys) == 2
    assert next(open_trace(t, block_tokens=1)).block_keys == token_block_keys([1, 2], 1)
    assert next(open_trace(a)).input_tokens == 1
    u = write_lines(tmp_path / "u.jsonl", [{"prompt": "hi"}])
    with pytest.raises(TraceError, match=f"^{u}:1: format: "):
        open_trace(u)
    with pytest.raises(ValueError, match="mooncake"):
        open_trace(m, fmt="parquet")


def test_trace_arrays_csr(tmp_path):
    p = write_lines(tmp_path / "m.jsonl", [moon(0, 1000, 5, [0, 1]), moon(3, 10, 6, [2]), moon(4, 0, 7, [])])
    a = trace_arrays(p)
    assert a["arrival_ms"].dtype == np.float64 and a["input_tokens"].dtype == np.int64
    assert a["block_keys"].dtype == np.uint64 and a["block_offsets"].tolist() == [0, 2, 3, 3]
    assert a["block_keys"].tolist() == [mooncake_key(i) for i in (0, 1, 2)]
    assert a["output_tokens"].tolist() == [5, 6, 7]


# ---------------------------------------------------------------- generator

def test_generator_is_deterministic(tmp_path):
    paths = [tmp_path / f"{i}.jsonl" for i in range(3)]
    for p, seed in zip(paths, (5, 5, 6)):
        write_mooncake(synthesize(200, seed), p)
    assert paths[0].read_bytes() == paths[1].read_bytes() != paths[2].read_bytes()


@pytest.mark.parametrize("name, n, seed", [("synth_small.jsonl", 300, 1), ("synth_medium.jsonl", 2000, 2)])
def test_shipped_traces_match_generator(tmp_path, name, n, seed):
    write_mooncake(synthesize(n, seed), tmp_path / name)
    assert (tmp_path / name).read_bytes() == (REPO / "traces" / name).read_bytes(), "run traces/make_traces.py"


def test_generated_trace_is_valid_and_round_trips(tmp_path):
    reqs = synthesize(1000, 3)
    write_mooncake(reqs, tmp_path / "s.jsonl")
    for line in (tmp_path / "s.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert type(row["timestamp"]) is int and len(row["hash_ids"]) == math.ceil(row["input_length"] / 512)
    back = list(read_mooncake(tmp_path / "s.jsonl"))
    assert [replace(r, session=-1) for r in reqs] == back  # the format has no session field
    assert 0.25 < reuse_ratio(reqs) < 0.55


def test_generated_turns_extend_their_prefix():
    last: dict[int, Request] = {}
    for r in synthesize(1500, 4):
        prev = last.get(r.session)
        if prev is not None:
            assert r.arrival_ms > prev.arrival_ms and r.input_tokens > prev.input_tokens + prev.output_tokens
            full = prev.input_tokens // 512
            assert r.block_keys[:full] == prev.block_keys[:full]
        last[r.session] = r
    assert len(last) < 1500  # there were multi-turn sessions at all


def test_session_starts_are_bursty():
    first: dict[int, float] = {}
    for r in synthesize(3000, 7):
        first.setdefault(r.session, r.arrival_ms)
    gaps = np.diff(sorted(first.values()))
    assert gaps.std() / gaps.mean() > 1.1  # a plain Poisson process would give ~1.0


def test_reuse_ratio_definition():
    mk = lambda keys: Request(0, 0.0, 512 * len(keys), 1, tuple(keys), 512)  # noqa: E731
    assert reuse_ratio([mk([1, 2]), mk([1, 3]), mk([1, 2, 4])]) == pytest.approx(3 / 7)
    assert reuse_ratio([]) == 0.0


# ---------------------------------------------------------------- real public traces

def test_real_mooncake_conversation():
    path = real("conversation_trace.jsonl")
    a = trace_arrays(path)
    ids = np.concatenate([json.loads(line)["hash_ids"] for line in path.open()]).astype(np.uint64)
    assert len(a["arrival_ms"]) == 12031 and len(a["block_keys"]) == 288500
    assert len(np.unique(a["block_keys"])) == len(np.unique(ids)) == 182790  # mapping is collision-free
    assert np.array_equal(a["block_keys"], mooncake_keys(ids))
    assert 0.36 < 1 - 182790 / 288500 < 0.37


def test_real_azure_and_sharegpt():
    conv = list(read_azure(real("AzureLLMInferenceTrace_conv.csv")))
    assert len(conv) == 19366 and conv[0].arrival_ms == 0.0
    assert all(b.arrival_ms >= a.arrival_ms for a, b in zip(conv, conv[1:]))
    share = list(read_token_ids(real("sharegpt-llama-3.1-8b-300-sps10.jsonl"), block_tokens=16))
    assert len(share) == 300 and all(len(r.block_keys) == math.ceil(r.input_tokens / 16) for r in share)


def test_bad_arguments_raise_config_error(tmp_path):
    from cxlsim.errors import ConfigError
    p = write_lines(tmp_path / "m.jsonl", [moon()])
    with pytest.raises(ConfigError, match="block_tokens"):
        list(read_mooncake(p, block_tokens=0))
    tokens = list(read_token_ids(write_lines(tmp_path / "t.jsonl", [tok(0, list(range(20)))]), block_tokens=16))
    with pytest.raises(ConfigError, match="Mooncake format needs"):
        write_mooncake(tokens, tmp_path / "out.jsonl")
    with pytest.raises(ConfigError, match="n_requests"):
        synthesize(0, 1)
