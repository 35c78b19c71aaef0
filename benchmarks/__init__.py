"""shardkit's benchmarks: ``python benchmarks/run.py`` (see its docstring)."""
