import sys

from imgclf.cli import main

sys.exit(main())
