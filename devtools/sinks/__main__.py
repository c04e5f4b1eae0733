"""``python -m devtools.sinks``: the sinks without Django, as ``running_sinks`` starts them."""

import argparse

from devtools.sinks import cli

parser = argparse.ArgumentParser(prog="python -m devtools.sinks", description=cli.__doc__)
cli.add_arguments(parser)
cli.serve(vars(parser.parse_args()))
