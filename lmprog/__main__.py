"""`python -m lmprog ...` is the `lmprog` command."""

from lmprog.cli import main

raise SystemExit(main())
