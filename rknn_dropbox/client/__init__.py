"""The CI client: submit models into a shared inbox and follow their jobs over the read-only HTTP API."""
