"""LLM serving traces: readers for public formats, a synthetic generator, array views."""
from cxlsim.traces.readers import (FORMATS, PREFIX_MODELS, detect_format, open_trace, read_azure,
                                   read_mooncake, read_token_ids, trace_arrays)
from cxlsim.traces.request import Request, mooncake_key, mooncake_keys, token_block_keys
from cxlsim.traces.synth import SynthParams, reuse_ratio, synthesize, write_mooncake

__all__ = [
    "FORMATS", "PREFIX_MODELS", "Request", "SynthParams", "detect_format", "mooncake_key",
    "mooncake_keys", "open_trace", "read_azure", "read_mooncake", "read_token_ids", "reuse_ratio",
    "synthesize", "token_block_keys", "trace_arrays", "write_mooncake",
]
