"""`python -m pipeline ...` is the same as `evol ...`."""

from pipeline.cli import main

if __name__ == "__main__":  # vLLM spawns an engine process: the entry point must be guarded
    main()
