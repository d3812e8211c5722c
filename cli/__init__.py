"""Thin click wiring: every command parses options and calls one library function."""
