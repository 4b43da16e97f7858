"""``python -m sskd_deploy``: the ``sskd-deploy`` command, for environments without the console script on PATH."""

import sys

from sskd_deploy.cli import main

if __name__ == "__main__":  # importing the module (e.g. walking the package) must not run the CLI
    sys.exit(main())
