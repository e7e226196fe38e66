"""``decision-trace serve``: the team's ledger service (OTLP ingest, read API, web view).

Needs the ``[server]`` extra (``pip install 'decision-trace-otel[server]'``); see
docs/server.md.
"""
