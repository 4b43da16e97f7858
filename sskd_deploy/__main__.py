"""``python -m sskd_deploy``: the ``sskd-deploy`` command, for environments without the console script on PATH."""

import sys

from sskd_deploy.cli import main

sys.exit(main())
