"""Recorded calls: writing cassettes as a call goes, and replaying them against the current code."""
