"""``python -m tracecanary.daemon.cli``: the ``tracecanary`` command."""

import sys

from tracecanary.daemon.cli.main import main

sys.exit(main())
