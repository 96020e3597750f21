"""What the command-line scripts (train.py, sample.py, bench.py) share: help text, one-line errors."""

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each flag's default once: not for flags without one (None, or off), nor where
    the help text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action) if text else "(default: %(default)s)"
