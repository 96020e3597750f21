"""Benchmarks and measurement scripts, run from the repository's root (python -m scripts.bench,
python scripts/big_data.py, ...). They may import the entry scripts (train.py, sample.py); nothing
imports them but their tests. A package, so that `scripts` is always this folder, never a package
of that name installed elsewhere."""
