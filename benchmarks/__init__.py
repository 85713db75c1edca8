"""Benchmarks of msa_fast (a package so the scripts share ``benchmarks.harness``; run with ``msa-fast bench OP``)."""
