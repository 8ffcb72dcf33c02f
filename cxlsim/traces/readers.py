"""Streaming readers for the three public trace formats, plus `trace_arrays`.

Every reader is a generator: it holds one row (Mooncake: one chunk of rows) at a
time.  Any malformed input raises TraceError("{path}:{line}: {field}: {problem}").
"""
from __future__ import annotations

import csv
import json
import math
import os
from datetime import datetime
from itertools import chain
from typing import Iterable, Iterator

import numpy as np

from cxlsim.errors import ConfigError, TraceError
from cxlsim.traces.request import MASK64, Request, hash64, mooncake_keys, token_block_keys

PathLike = str | os.PathLike
FORMATS = ("mooncake", "azure", "token_ids")
PREFIX_MODELS = ("none", "shared-system-prompt:N")
_MISSING = object()
_INT = {int}  # bool is a subclass of int, but not a valid count or id
_CHUNK = 4096  # Mooncake rows whose keys are mixed in one numpy call


def _fail(path: PathLike, line: int, field: str, problem: str) -> TraceError:
    return TraceError(f"{os.fspath(path)}:{line}: {field}: {problem}")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _get(path, line, obj, field):
    value = obj.get(field, _MISSING)
    if value is _MISSING:
        raise _fail(path, line, field, "missing")
    return value


def _count(path, line, obj, field) -> int:
    """A non-negative JSON integer (bools are not integers here)."""
    value = _get(path, line, obj, field)
    if type(value) is not int:
        raise _fail(path, line, field, f"expected a non-negative integer, got {_show(value)}")
    if value < 0:
        raise _fail(path, line, field, f"must not be negative, got {value}")
    return value


def _time(path, line, obj, field, prev: float) -> float:
    """A finite, non-negative JSON number that does not go backwards."""
    value = _get(path, line, obj, field)
    if type(value) not in (int, float) or (type(value) is float and not math.isfinite(value)):
        raise _fail(path, line, field, f"expected a non-negative number, got {_show(value)}")
    if value < 0:
        raise _fail(path, line, field, f"must not be negative, got {value}")
    if value < prev:
        raise _fail(path, line, field, f"goes backwards ({value} after {prev})")
    return value


def _int_list(path, line, obj, field, limit: int) -> list[int]:
    """A JSON list of integers in [0, limit)."""
    value = _get(path, line, obj, field)
    if type(value) is not list:
        raise _fail(path, line, field, f"expected a list of non-negative integers, got {_show(value)}")
    # set/map/min/max run in C; only look for the culprit when they say no
    if not set(map(type, value)) <= _INT or (value and (min(value) < 0 or max(value) >= limit)):
        bad = next(x for x in value if type(x) is not int or not 0 <= x < limit)
        raise _fail(path, line, field, f"expected a list of non-negative integers below {limit}, got {_show(bad)}")
    return value


def _json_lines(path: PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line."""
    with open(path, encoding="utf-8", errors="replace") as f:  # bad bytes fail at their line
        for lineno, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise _fail(path, lineno, "json", f"invalid JSON ({e.msg} at column {e.colno})") from None
            if type(obj) is not dict:
                raise _fail(path, lineno, "json", f"expected an object, got {_show(obj)}")
            yield lineno, obj


def _check_block_tokens(block_tokens: int) -> None:
    if type(block_tokens) is not int or block_tokens < 1:
        raise ConfigError(f"block_tokens must be a positive integer, got {block_tokens!r}")


def _empty(path: PathLike) -> TraceError:
    return _fail(path, 1, "file", "no requests (empty trace)")


def read_mooncake(path: PathLike, block_tokens: int = 512) -> Iterator[Request]:
    """Mooncake JSON lines: timestamp (ms), input_length, output_length, hash_ids."""
    _check_block_tokens(block_tokens)
    rows: list[tuple] = []
    prev_ts, n = 0.0, 0
    for line, obj in _json_lines(path):
        prev_ts = _time(path, line, obj, "timestamp", prev_ts)
        n_in = _count(path, line, obj, "input_length")
        n_out = _count(path, line, obj, "output_length")
        ids = _int_list(path, line, obj, "hash_ids", MASK64)
        want = -(-n_in // block_tokens)
        if len(ids) != want:
            raise _fail(path, line, "hash_ids", f"has {len(ids)} ids but ceil(input_length / "
                        f"{block_tokens}) = ceil({n_in} / {block_tokens}) = {want}")
        rows.append((prev_ts, n_in, n_out, ids))
        if len(rows) == _CHUNK:
            yield from _mooncake_chunk(rows, n, block_tokens)
            n += len(rows)
            rows = []
    if rows:
        yield from _mooncake_chunk(rows, n, block_tokens)
        n += len(rows)
    if n == 0:
        raise _empty(path)


def _mooncake_chunk(rows: list[tuple], first_id: int, block_tokens: int) -> Iterator[Request]:
    # one vectorised mix per chunk instead of one Python call per block
    flat = mooncake_keys(np.fromiter(chain.from_iterable(r[3] for r in rows), dtype=np.uint64)).tolist()
    pos = 0
    for i, (ts, n_in, n_out, ids) in enumerate(rows):
        end = pos + len(ids)
        yield Request(first_id + i, float(ts), n_in, n_out, tuple(flat[pos:end]), block_tokens)
        pos = end


def read_token_ids(path: PathLike, block_tokens: int = 16) -> Iterator[Request]:
    """ShareGPT-style JSON lines with real token ids; keys chain per `block_tokens`."""
    _check_block_tokens(block_tokens)
    prev_ns, n = 0.0, 0
    for line, obj in _json_lines(path):
        prev_ns = _time(path, line, obj, "arrival_time_ns", prev_ns)
        n_in = _count(path, line, obj, "input_toks")
        n_out = _count(path, line, obj, "output_toks")
        toks = _int_list(path, line, obj, "input_tok_ids", 1 << 31)  # hashed as int32
        if len(toks) != n_in:
            raise _fail(path, line, "input_tok_ids", f"has {len(toks)} ids but input_toks = {n_in}")
        out_ids = obj.get("output_tok_ids", _MISSING)  # optional; checked when present
        if out_ids is not _MISSING:
            out_ids = _int_list(path, line, obj, "output_tok_ids", 1 << 31)
            if len(out_ids) != n_out:
                raise _fail(path, line, "output_tok_ids", f"has {len(out_ids)} ids but output_toks = {n_out}")
        yield Request(n, prev_ns / 1e6, n_in, n_out, token_block_keys(toks, block_tokens), block_tokens)
        n += 1
    if n == 0:
        raise _empty(path)


def _prefix_model(name: str) -> int | None:
    """None for "none", else the system-prompt length N of "shared-system-prompt:N"."""
    if name == "none":
        return None
    head, _, num = name.partition(":")
    if head == "shared-system-prompt" and num.isascii() and num.isdigit():
        return int(num)
    raise ConfigError(f"unknown prefix model {name!r}; known: {', '.join(PREFIX_MODELS)}")


def _system_prompt_keys(request_id: int, n_in: int, sys_tokens: int, block_tokens: int) -> tuple[int, ...]:
    """Prefix model for traces without prefix info: every prompt opens with the same
    `sys_tokens`-token system prompt.  Blocks lying wholly inside it are shared by all
    requests; every later block (including one straddling the boundary) is private."""
    shared = min(sys_tokens, n_in) // block_tokens
    keys, prev = [], 0
    for i in range(-(-n_in // block_tokens)):
        tag = b"sys:%d" % i if i < shared else b"req:%d:%d" % (request_id, i)
        prev = hash64(prev.to_bytes(8, "little") + tag)
        keys.append(prev)
    return tuple(keys)


def _azure_ns(text: str) -> int:
    """'2023-11-16 18:15:46.6805900' -> ns since 0001-01-01 (7 fraction digits kept exactly)."""
    whole, _, frac = text.strip().partition(".")
    if frac and not (frac.isascii() and frac.isdigit()):
        raise ValueError(text)
    dt = datetime.fromisoformat(whole)
    if dt.tzinfo is not None or dt.microsecond:
        raise ValueError(text)
    secs = dt.toordinal() * 86400 + dt.hour * 3600 + dt.minute * 60 + dt.second
    return secs * 10**9 + int((frac + "000000000")[:9])


def _csv_count(path, line, field, text: str) -> int:
    text = text.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    if text.startswith("-") and text[1:].isascii() and text[1:].isdigit():
        raise _fail(path, line, field, f"must not be negative, got {text}")
    raise _fail(path, line, field, f"expected a non-negative integer, got {_show(text)}")


def read_azure(path: PathLike, prefix_model: str = "none", block_tokens: int = 512) -> Iterator[Request]:
    """Azure LLM inference CSV (TIMESTAMP, ContextTokens, GeneratedTokens).

    arrival_ms is relative to the first row.  The format has no prefix info, so
    `prefix_model` decides the block keys: "none" (no keys) or
    "shared-system-prompt:N" (see `_system_prompt_keys`).
    """
    sys_tokens = _prefix_model(prefix_model)  # fail on a bad name before opening the file
    _check_block_tokens(block_tokens)
    fields = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
    n, t0, prev = 0, None, None
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        rows = csv.reader(f)
        header = next((h for h in rows if any(x.strip() for x in h)), None)  # skip blank lines
        if header is None:
            raise _empty(path)
        header = [h.strip() for h in header]
        missing = [h for h in fields if h not in header]
        if missing:
            raise _fail(path, rows.line_num, missing[0], f"missing from header {_show(','.join(header))}")
        cols = [header.index(h) for h in fields]
        for row in rows:
            line = rows.line_num
            if not any(x.strip() for x in row):
                continue
            if len(row) != len(header):
                raise _fail(path, line, "row", f"expected {len(header)} fields, got {len(row)}")
            stamp, ctx, gen = (row[c] for c in cols)
            try:
                ns = _azure_ns(stamp)
            except ValueError:
                raise _fail(path, line, "TIMESTAMP", f"expected 'YYYY-MM-DD HH:MM:SS.fffffff', got {_show(stamp)}") from None
            if prev is not None and ns < prev:
                raise _fail(path, line, "TIMESTAMP", f"goes backwards ({stamp.strip()} is before the previous row)")
            n_in = _csv_count(path, line, "ContextTokens", ctx)
            n_out = _csv_count(path, line, "GeneratedTokens", gen)
            t0 = ns if t0 is None else t0
            prev = ns
            keys = () if sys_tokens is None else _system_prompt_keys(n, n_in, sys_tokens, block_tokens)
            yield Request(n, (ns - t0) / 1e6, n_in, n_out, keys, block_tokens)
            n += 1
    if n == 0:
        raise _empty(path)


_READERS = {"mooncake": read_mooncake, "azure": read_azure, "token_ids": read_token_ids}


def detect_format(path: PathLike) -> str:
    """'azure' for .csv; else look at the first JSON line's fields."""
    if os.fspath(path).lower().endswith(".csv"):
        return "azure"
    with open(path, encoding="utf-8", errors="replace") as f:  # bad bytes fail at their line
        for lineno, text in enumerate(f, 1):
            if text.strip():
                break
        else:
            raise _empty(path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = None
    if isinstance(obj, dict) and "hash_ids" in obj:
        return "mooncake"
    if isinstance(obj, dict) and "input_tok_ids" in obj:
        return "token_ids"
    raise _fail(path, lineno, "format", "cannot detect the trace format (want a .csv file, or JSON "
                "lines with 'hash_ids' or 'input_tok_ids'); pass fmt= explicitly")


def open_trace(path: PathLike, fmt: str = "auto", **kw) -> Iterator[Request]:
    """Open any supported trace; `fmt` is "auto" or one of FORMATS, `kw` goes to the reader."""
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in _READERS:
        raise ConfigError(f"unknown trace format {fmt!r}; known: auto, {', '.join(FORMATS)}")
    return _READERS[fmt](path, **kw)


def trace_arrays(requests: Iterable[Request] | PathLike) -> dict[str, np.ndarray]:
    """Columnar view for the cache simulator (a path is opened with `open_trace`).

    Returns arrival_ms (float64), input_tokens, output_tokens (int64),
    block_offsets (int64, n+1 CSR offsets) and block_keys (uint64, flat):
    request i's keys are block_keys[block_offsets[i]:block_offsets[i+1]]; and block_tokens (int,
    tokens per block, 512 when the trace has no requests).
    """
    if isinstance(requests, (str, os.PathLike)):
        requests = open_trace(requests)
    arrival, n_in, n_out, keys = [], [], [], []
    block_tokens = 512
    for r in requests:
        block_tokens = r.block_tokens
        arrival.append(r.arrival_ms)
        n_in.append(r.input_tokens)
        n_out.append(r.output_tokens)
        keys.append(r.block_keys)
    offsets = np.zeros(len(keys) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, keys), dtype=np.int64, count=len(keys)), out=offsets[1:])
    flat = np.fromiter(chain.from_iterable(keys), dtype=np.uint64, count=int(offsets[-1]))
    return {
        "arrival_ms": np.array(arrival, dtype=np.float64),
        "input_tokens": np.array(n_in, dtype=np.int64),
        "output_tokens": np.array(n_out, dtype=np.int64),
        "block_offsets": offsets,
        "block_keys": flat,
        "block_tokens": block_tokens,
    }
