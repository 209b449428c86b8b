"""``python -m align.train``: the train stage's command line (see :mod:`align.train`)."""

from . import main

raise SystemExit(main())
