import sys

from nrp_deploy.cli import main

sys.exit(main())
