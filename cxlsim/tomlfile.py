"""Reading a TOML file with errors that name it (topologies, hardware presets, replay configs)."""
import tomllib
from pathlib import Path

from .errors import ConfigError


def read_toml(path: str | Path, what: str = "file") -> dict:
    """The parsed file; a missing file or bad TOML is a ConfigError naming the path."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a {what}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
