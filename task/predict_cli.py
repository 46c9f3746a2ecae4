"""Old entry point, kept working: ``python -m task.predict_cli`` is ``python -m task.predict``."""

import sys

from task.predict.cli import export_main, main, predict_main

__all__ = ["export_main", "main", "predict_main"]

if __name__ == "__main__":
    sys.exit(main())
