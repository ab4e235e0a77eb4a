"""Identify: which words of each forget answer are unwanted (UW); everything else is general (GW)."""

from tokenforget.identify.formats import read_identified, write_identified, write_published

__all__ = ["read_identified", "write_identified", "write_published"]
