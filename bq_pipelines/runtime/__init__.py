"""Where runs execute: the production instance storage, the executors and the Celery worker,
run monitoring, runs launched from the command line, and the servers for people (the tile
server, the browse server)."""
