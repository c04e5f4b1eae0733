"""Development and benchmarking tools that are not part of the product: the local provider
sinks (``devtools.sinks``), the naive delivery baseline (``devtools.naive``) and the
delivery benchmark (``devtools.bench``), with their commands (``run_sinks``,
``bench_delivery``) and the baseline's Celery task.

Tests, scripts and these tools import it; the product apps never do, and the wheel leaves
it out (``config.settings`` installs the app only when it is importable)."""
