"""``python -m decision_trace``: the ``decision-trace`` command."""

from .cli import main

main(prog_name="decision-trace")
