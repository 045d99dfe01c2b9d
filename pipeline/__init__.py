"""Video and text ingestion: everything between a manifest line and the arrays a shard stores.

manifest (read samples) -> probe (what is in each file) -> budget (fps, size, segments that fit the
token budget) -> units (work split by stored bytes) -> decode (planned frames, bounded windows) and
text (token ids, loss mask). Bad input anywhere becomes an :class:`pipeline.errors.InputError`.
Nothing here imports shards/, model/, parallel/ or jobs/.
"""
