"""Command-line modules, one per command (argparse lives here and nowhere else in semiseg); each exposes
``configure(parser)`` and ``run(args) -> int`` for semiseg/cli.py. ``flags.py`` holds the flags several commands
share (the inference mode, ``--allow-code``)."""
