"""Needle-in-a-haystack retrieval: needles (needles.py), long documents of real video and text
around them (haystack.py), and scoring a model's answer (score.py). Used by `longshot eval`
(jobs/steps/eval.py) and by the retrieval samples mixed into training (jobs/steps/train_retrieval.py)."""
