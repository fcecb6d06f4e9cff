"""`python -m rknn_dropbox`: the same as the rknn-dropbox command."""

import sys

from .cli import main

sys.exit(main())
