"""Streaming shards into PyTorch: partition (pure) → reader stages → dataset → collate → loader → device.

Public names (also importable from ``shardkit``): :class:`~.dataset.StreamingDataset`,
:func:`~.loader.make_loader`, :func:`~.collate.image_collate`, :func:`~.collate.pad_collate`,
:class:`~.collate.BucketBatchSampler`, :class:`~.device.DeviceLoader`.
"""
