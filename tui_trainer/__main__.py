"""``python -m tui_trainer ...`` (and ``torchrun -m tui_trainer ...``): the same as the ``tui-trainer`` script."""

import sys

from tui_trainer.cli.main import main

sys.exit(main())
