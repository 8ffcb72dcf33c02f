"""One exception family for everything cxlsim raises on purpose.

Each subclass also inherits the builtin a caller would naturally catch (ValueError, KeyError,
...), so `except ValueError` keeps working for code that does not know cxlsim.
"""


class CxlsimError(Exception):
    """Base of every error cxlsim raises on purpose."""


class ConfigError(CxlsimError, ValueError):
    """A configuration (TOML file, preset, argument) is invalid; the message names file and field."""


class TraceError(CxlsimError, ValueError):
    """A trace file is malformed; the message names file, line and field."""


class CoreError(CxlsimError, RuntimeError):
    """The C core refused an operation; carries the core's status code and message."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class InvalidArgument(CoreError, ValueError):
    """The core rejected an argument."""


class BlockNotFound(CoreError, KeyError):
    """The block key is not in the index (or directory)."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class TierFull(CoreError):
    """No room in a tier and nothing evictable."""


class BlockPinned(CoreError):
    """The block is pinned by a running request."""


class BlockExists(CoreError, KeyError):
    """The block key is already in the index."""

    def __str__(self) -> str:
        return self.args[0]


class PoolError(CxlsimError, RuntimeError):
    """A pool server refused a request or could not be reached."""


class PoolTimeout(PoolError):
    """No reply in time: the server may still carry the request out later."""


class ProtocolError(PoolError, ValueError):
    """A pool frame broke the wire protocol (cxlsim/pool/protocol.py); the message names the field."""
