"""``python -m bench``: run every benchmark and print the figures."""

from bench.run import main

raise SystemExit(main())
