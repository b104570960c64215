"""The lab: the project's benchmarks and its search-quality lab, a package of the repository (not installed).

Each benchmark measures one claim against a named peer in the same run and writes the figures that
benchmarks/RESULTS.md records: the mixers, the model and its throughput, the proxy trainer, the search engine's
efficiency, the GPU suite, and the search lab (our search against Optuna, Ray Tune and Syne Tune replayed on a
tabulated benchmark of our space, with the tables and seed columns it is built from). Its modules import each other
as ``benchmarks.<name>`` and run from the repository root as ``python -m benchmarks.<name>`` (``nas bench <name>``
runs the same modules), e.g.

    python -m benchmarks.search_lab run
    python -m benchmarks.gpu_suite --device cpu --tiny --out OUT

The lab reaches Optuna and Syne Tune through their public names only; the one exception is
benchmarks/syne_adapter.py (Syne Tune internals, named there), as nas/engine/optuna_adapter.py is for Optuna.
"""
