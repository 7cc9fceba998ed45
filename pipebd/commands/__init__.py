"""One module per CLI command (each exposes ``add_cli(subparsers)``); :mod:`pipebd.cli` dispatches."""
