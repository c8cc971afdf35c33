"""One module per ``streamadapt`` sub-command; each defines ``add_parser(subparsers)``."""
