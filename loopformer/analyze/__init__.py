"""What a trained run's loop computes: per-loop dynamics, matching to gradient descent and
Iterative Newton, linear probes of the hidden state, and early exit
(``python -m loopformer.analyze run=RUN_DIR``)."""
