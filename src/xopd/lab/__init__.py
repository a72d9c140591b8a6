"""The lab: everything that serves the embedded mini world, the benchmarks and the CPU recipes.

Above the core and the CPU speed kit (docs/DESIGN.md section 7): ``train.py`` (what ``xopd train``
runs: the core trainer with the kit and the lab's options), ``tiny.py`` (the one builder of tiny
models, for tests, the bench and the mini world), ``weights/`` (offline weight converters),
``world/`` (``xopd demo``, ``xopd reproduce``), ``bench/`` (``xopd bench``), ``recipes/`` (real
weights on CPU). Nothing in the core imports from here.
"""
