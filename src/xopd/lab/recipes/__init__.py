"""Recipes: whole pipelines built from the layers below (docs/DESIGN.md section 7).

``real_cpu`` runs X-OPD on real pretrained weights on a CPU. The mini world (``xopd.lab.world``) and the
benchmarks (``xopd.lab.bench``) are recipes too; they keep their own packages because each is several
modules.
"""
