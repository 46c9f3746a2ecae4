"""Old entry point, kept working: ``python -m server_app.launch`` is ``python -m launcher``."""

from launcher.cli import cli

if __name__ == "__main__":
    cli()
