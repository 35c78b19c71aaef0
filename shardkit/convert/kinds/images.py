"""ImageFolder trees (local or at a URL): listed as torchvision lists them, each image validated and
stored byte for byte or converted (:mod:`..images`), shards cut on the files' sizes."""

from __future__ import annotations

import functools

from ...format.manifest import Manifest
from ...format.schema import Schema
from ..images import ImageChunk
from ..plan import plan_images
from ..sources import list_images
from .base import InputKind, Request, all_skipped, refuse_dst_inside, shard_infos

#: A chunk holds at most this many images, or this many source bytes (a shard of one chunk would
#: leave the other cores idle; a larger chunk holds more memory per task in flight).
CHUNK_IMAGES = 32
CHUNK_BYTES = 16 << 20


class ImagesKind(InputKind):
    name = "images"
    reads = "no image by their extension"
    whole_shards = True

    def check(self, src, dst, opts) -> None:
        refuse_dst_inside(src, dst, "ImageFolder tree")

    def list(self, src, request: Request):
        return list_images(src, request.storage_options, remote_files=request.remote_files, checksum=request.checksum)

    def plan(self, listed, scans, opts, digest):
        return plan_images(listed, opts, digest)

    def shard_tasks(self, plan, index):
        src, opts = plan.source, plan.options
        chunk = functools.partial(ImageChunk, src.root, validate=opts.validate, resize=opts.resize,
                                  quality=opts.quality, storage_options=src.storage_options)
        tasks, items, size = [], [], 0
        for position in plan.shard_positions(index):
            item = src.items[plan.order[position]]
            if items and (len(items) == CHUNK_IMAGES or size + item.size > CHUNK_BYTES):
                tasks.append(chunk(items=tuple(items)))
                items, size = [], 0
            items.append((position, item.path, item.label, src.classes[item.label]))
            size += item.size
        tasks.append(chunk(items=tuple(items)))
        return tasks

    def manifest(self, plan, records):
        return Manifest(kind="images", schema=Schema.images(), shards=shard_infos(records),
                        params=plan.options.as_params(), skipped=all_skipped(plan, records),
                        classes=list(plan.source.classes))
