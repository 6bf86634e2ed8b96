"""Runs -> results: a study's data (:mod:`~loopformer.results.export`), its aggregation over
seeds (:mod:`~loopformer.results.aggregate`, :mod:`~loopformer.results.reports`), the tables of
results pages (:mod:`~loopformer.results.tables`, :mod:`~loopformer.results.analysis_tables`,
:mod:`~loopformer.results.pages`) and every figure (:mod:`~loopformer.results.plots`,
:mod:`~loopformer.results.study_plots`). The top layer: nothing else in loopformer imports
it but the commands that write a run's evaluation or analysis."""
