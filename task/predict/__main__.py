"""``python -m task.predict``: predict with, or export, a trained model (task.predict.cli)."""

import sys

from task.predict.cli import main

sys.exit(main())
