"""`python -m bq_pipelines.cli ...`, as `bq-pipelines ...`."""

import sys

from bq_pipelines.cli.main import main

sys.exit(main())
