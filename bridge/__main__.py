"""`python -m bridge` is the `sip-to-ai` command."""

from bridge.cli import main

raise SystemExit(main())
