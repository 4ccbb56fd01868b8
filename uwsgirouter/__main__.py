"""``python -m uwsgirouter`` runs the same entry point as the console script."""

from uwsgirouter.cli import main

raise SystemExit(main())
