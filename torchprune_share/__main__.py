"""``python -m torchprune_share``: the command line."""

from .cli import main

raise SystemExit(main())
