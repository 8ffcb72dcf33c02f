"""Shared CXL pool: the contract (api), in-process pool, wire protocol, server and client."""
