"""Local development tooling: embedded PostgreSQL/Redis, a local identity provider standing in for Cognito,
API Gateway's ``@connections`` endpoint, and the local server built on them.

Dev-only: nothing here is imported by ``app.py`` or ``chalicelib/``, and the package is never part of the Lambda
deployment.
"""
