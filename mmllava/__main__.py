import sys

from mmllava.cli import main

sys.exit(main())
