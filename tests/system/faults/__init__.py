"""Fault corpus: damaged variants of real volumes, made at test time (nothing generated is committed)."""
