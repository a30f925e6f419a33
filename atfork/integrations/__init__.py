"""Integrations that make libraries fork-safe, built on :func:`atfork.atfork`."""
