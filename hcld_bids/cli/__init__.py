"""Command line: :mod:`.parser` builds the parser, :mod:`.run` turns arguments into a config and runs."""
