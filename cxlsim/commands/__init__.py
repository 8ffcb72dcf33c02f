"""One module per `cxlsim` subcommand (see cxlsim/cli.py)."""
