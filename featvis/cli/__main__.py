"""``python -m featvis.cli`` runs the featvis command."""

from featvis.cli import main

raise SystemExit(main())
