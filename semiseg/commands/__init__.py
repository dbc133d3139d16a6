"""Command-line modules, one per command (argparse lives here); each exposes ``configure(parser)`` and
``run(args) -> int`` for semiseg/cli.py. (Older commands still live beside the code they drive, e.g.
semiseg/engine/commands_train.py.)"""
