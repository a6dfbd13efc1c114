import sys

from workspace_fsm.cli.main import main

sys.exit(main())
