"""Run by Python as every process starts whose PYTHONPATH names this folder: the Makefile exports
it for everything it starts (tests, services, the demo), deploy/Dockerfile sets it in the image,
and the processes Dagster and Celery start themselves (run workers, step processes, code servers)
inherit it.

Every process of the project imports Dagster and the project (about a million objects that live
as long as it) before it does anything. With Python's default youngest generation (collected
every 700 allocations) the collector went through that growing heap again and again during the
imports: from the first line, a code-location load takes ~12 % less CPU (median of 8 alternating
runs: 1.95 -> 1.72 s), in each of the ~250 Python processes of `make test` and in every run
worker. bq_pipelines/lib/garbage_collection.py holds the rule.
"""

try:
    from bq_pipelines.lib.garbage_collection import collect_the_young_generation_less_often
except ImportError:  # an interpreter without the project (the one that makes the venv)
    pass
else:
    collect_the_young_generation_less_often()
