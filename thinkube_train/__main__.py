"""`python -m thinkube_train CONFIG.json`: see thinkube_train.trainer."""

import sys

from .trainer import main

sys.exit(main())
