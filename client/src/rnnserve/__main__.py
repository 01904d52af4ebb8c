"""`python -m rnnserve` runs the command-line tool."""

from rnnserve.cli import main

raise SystemExit(main())
