"""``python -m launcher``: compose conf/ presets into `flwr run` calls (launcher.cli)."""

from launcher.cli import cli

cli()
