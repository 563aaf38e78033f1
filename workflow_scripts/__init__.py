"""gguf-forge: the logic behind the Snakemake rules, importable and unit-tested."""
