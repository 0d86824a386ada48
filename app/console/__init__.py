"""The operator console: one page (``GET /console``) and its static files, all in the package."""
