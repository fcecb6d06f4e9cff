"""The read-only status endpoint: HTTP server, connection gate, HTML page, Prometheus metrics."""
