"""Parallel layouts of the VLM (DESIGN.md, "Parallel layouts"): the LM with context, expert and
data parallelism, the ViT data-parallel over every rank with frame groups balanced by cost, the
all-to-all hand-off of vision tokens, and context parallelism for dense attention and DSA.

Entry points: Layout (layout.py), init_layout (groups.py), ParallelForward (forward.py).
"""
