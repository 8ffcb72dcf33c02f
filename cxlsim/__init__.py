"""cxlsim: an emulator of CXL memory pooling and KV-cache tiering for LLM inference.

Start from README.md; docs/architecture.md maps the modules. The main entry points:
`cxlsim.fabric.Fabric` (timing), `cxlsim.index.BlockIndex` and `cxlsim.kv.KVStore` (KV tiers
under a policy), `cxlsim.cachesim.simulate`, `cxlsim.replay.run_replay`, `cxlsim.pool`.
"""
__version__ = "0.1.0"
