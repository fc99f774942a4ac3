"""`python -m fsl.cli` (as torchrun runs it): the `fsl` command."""

import sys

from fsl.cli.main import main

sys.exit(main())
