class BenchmarkError(Exception):
    """A benchmark could not measure what it set out to (a process did not start, a campaign
    did not complete in time…); ``manage.py bench_delivery`` prints it as one line."""
