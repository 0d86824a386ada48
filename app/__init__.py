"""ctmm-bridge: a durable two-way webhook bridge between CleverTap and Mailmodo."""

__version__ = "0.1.0"
