"""`python -m rknn_dropbox`: the same as the rknn-dropbox command."""

import sys

from rknn_dropbox.cli import main

sys.exit(main())
