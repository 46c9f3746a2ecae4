"""Reliability and security tests: failures, resume, local-state integrity, hostile updates,
privacy, bad configuration (issue 8)."""
