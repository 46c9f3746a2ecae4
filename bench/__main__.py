"""``python -m bench [ARGS]``: the local-step benchmark (``bench.local_step``)."""

from bench.local_step import main

main()
