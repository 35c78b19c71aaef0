"""The shard format, one definition for the writer (``shardkit.convert``) and the reader (``shardkit.stream``)."""
