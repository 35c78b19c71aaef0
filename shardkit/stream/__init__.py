"""Streaming shards into PyTorch: partition (pure) → reader stages → dataset → collate → loader → device.

Public names (also importable from ``shardkit``): :class:`~.dataset.StreamingDataset`,
:func:`~.loader.make_loader`, :func:`~.collate.image_collate`, :func:`~.collate.pad_collate`,
:class:`~.collate.BucketBatchSampler`, :class:`~.device.DeviceLoader`, :class:`~.mix.Mix` (weighted mixing),
:class:`~.indexed.IndexedDataset` (random access); packing is ``make_loader(..., block_size=L)``.
"""
