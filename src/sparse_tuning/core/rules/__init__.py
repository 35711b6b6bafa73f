"""The token-reduction rules, one module each, found by core/reduction.py's registry. A module
imports no torch when it loads (the command line lists the rules without it)."""
