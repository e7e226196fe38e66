"""Span exporters shipped with decision-trace, importable as ``decision_trace.exporters``.

This folder is installed as the ``decision_trace.exporters`` package (see
``pyproject.toml``); there is deliberately no top-level ``exporters`` module, since PyPI
has an unrelated package of that name.
"""

from .sqlite import SQLiteSpanExporter

__all__ = ["SQLiteSpanExporter"]
