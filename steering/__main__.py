"""`python -m steering ...`: see steering.cli."""

from steering.cli import main

raise SystemExit(main())
