"""The operator's powers over the outbox, shared by the ``/admin`` API and the CLI."""
