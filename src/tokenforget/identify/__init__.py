"""Identify: which words of each forget answer are unwanted (UW); everything else is general (GW)."""

from tokenforget.identify.formats import read_identified, write_identified

__all__ = ["read_identified", "write_identified"]
