"""``python -m task.report --runs runs --out docs/results.md``."""

from task.report.cli import main

raise SystemExit(main())
