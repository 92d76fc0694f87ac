"""``python -m gateway_app``: the command line (:mod:`gateway_app.cli`)."""

import sys

from .cli import main

sys.exit(main())
