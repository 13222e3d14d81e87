"""Shipped configs (installed as the package mmllava.configs)."""
