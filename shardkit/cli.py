"""The ``shardkit`` command: a thin click layer over :mod:`shardkit.convert` and :mod:`shardkit.inspect`.

Heavy modules are imported inside the commands, so ``shardkit --help`` answers at once.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

import click

from .errors import ShardkitError


class SizeParam(click.ParamType):
    """A byte size: ``256MB``, ``1.5GiB``, ``1000``."""

    name = "size"

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        from .convert.options import parse_size

        try:
            return parse_size(value)
        except ValueError as err:
            self.fail(str(err), param, ctx)


SIZE = SizeParam()


def _printable(text: str) -> str:
    from .inspect import printable

    return printable(text)


def _run(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ShardkitError as err:
        # one line, whatever names it carries: a file name may hold a newline or a terminal escape
        raise click.ClickException(_printable(str(err))) from None


def _not_empty(ctx, param, value: str) -> str:
    if not value:
        raise click.BadParameter("must not be empty: it names the field to read")
    return value


def _not_empty_if_given(ctx, param, value: str | None) -> str | None:
    if value is not None and not value.strip(" ,"):
        raise click.BadParameter("must not be empty: it names a column")
    return value


class _PrintableFormatter(logging.Formatter):
    """Log lines with control characters escaped (names in them come from the data)."""

    def format(self, record: logging.LogRecord) -> str:
        return _printable(super().format(record))


class Terminated(KeyboardInterrupt):
    """SIGTERM (``docker stop``, a scheduler's kill): unwinds the conversion exactly as Ctrl-C does."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="shardkit")
@click.option("-v", "--verbose", is_flag=True, help="Log what shardkit does.")
def cli(verbose: bool) -> None:
    """Convert datasets into WebDataset-compatible tar shards, inspect and verify them."""
    handler = logging.StreamHandler()
    handler.setFormatter(_PrintableFormatter("%(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])


@cli.command()
@click.argument("src", nargs=-1, required=True, type=click.Path())
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("--kind", type=click.Choice(["images", "sequences", "table", "tabular", "webdataset"]),
              help="Input kind (detected from the files by default).")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True, help="Shuffle seed.")
@click.option("--no-shuffle", is_flag=True, help="Keep the source order (ImageFolder order is class by class).")
@click.option("--max-shard-size", type=SIZE, default="256MB", show_default=True,
              help="Largest shard, e.g. 64MB, 1.5GiB, 1000000.")
@click.option("--max-shard-samples", type=click.IntRange(1), help="Most samples per shard.")
@click.option("--workers", type=click.IntRange(1), help="Worker processes [default: the CPU count].")
@click.option("--strict", is_flag=True, help="Fail (and write no manifest) if any input must be skipped.")
@click.option("--overwrite", is_flag=True, help="Replace the shards and manifest of another dataset in DST.")
@click.option("--resize", type=click.IntRange(1), metavar="S",
              help="Cap the longer image side at S pixels (re-encoded as JPEG).")
@click.option("--quality", type=click.IntRange(1, 100), default=90, show_default=True,
              help="JPEG quality for --resize.")
@click.option("--validate", type=click.Choice(["full", "header"]), default="full", show_default=True,
              help="full: decode every image once; header: only open it.")
@click.option("--no-validate", is_flag=True, help="Same as --validate header.")
@click.option("--tokens-field", default="tokens", show_default=True, callback=_not_empty,
              help="JSONL field holding the tokens.")
@click.option("--label-field", default="label", show_default=True, callback=_not_empty,
              help="JSONL field, table column or .npz array holding the (integer) label.")
@click.option("--image-field", metavar="COL", callback=_not_empty_if_given,
              help="Table column holding image paths (relative to the table or --root) or URLs.")
@click.option("--root", type=click.Path(file_okay=False), help="Where a table's relative image paths start.")
@click.option("--fields", metavar="A,B,...", callback=_not_empty_if_given,
              help="Table columns to keep (default: all); tabular CSV/Parquet: the feature columns.")
@click.option("--features-field", default="features", show_default=True, callback=_not_empty,
              help=".npz array holding the features.")
@click.option("--labels", type=click.Path(dir_okay=False), help="A .npy of labels, beside a .npy of features.")
@click.option("--allow-nan", is_flag=True, help="Keep tabular rows holding NaN or infinity (skipped by default).")
@click.option("--checksum-sources", is_flag=True,
              help="Hash every source file to tell whether it changed (reads SRC once more); by default "
                   "sizes, modification times and the content of small files tell.")
@click.option("--scheduler", metavar="ADDRESS", help="Write shards on a Dask cluster: tcp://host:8786, or 'local'.")
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: on a terminal].")
def convert(src, dst, kind, seed, no_shuffle, max_shard_size, max_shard_samples, workers, strict, overwrite,
            resize, quality, validate, no_validate, tokens_field, label_field, image_field, root, fields,
            features_field, labels, allow_nan, checksum_sources, scheduler, progress) -> None:
    """Convert the dataset at SRC into shards in DST: an ImageFolder tree, .jsonl/.txt sequence
    files, a table (.csv/.jsonl/.parquet), tabular features (.npz, .npy with --labels, numeric
    .csv/.parquet) or webdataset tars (several SRC, a brace pattern or a directory of them).

    SRC (images, tables, tars) and DST may be URLs such as s3://bucket/prefix (credentials come
    from the usual environment and config files). Re-running the same command resumes an
    interrupted conversion.
    """
    from .convert import convert as run_convert

    if no_validate:
        if click.get_current_context().get_parameter_source("validate").name == "COMMANDLINE" and validate == "full":
            raise click.UsageError("--no-validate contradicts --validate full")
        validate = "header"
    started = time.monotonic()
    # (signal handlers belong to the main thread: a CLI called from another thread keeps the default)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        manifest = _run(run_convert, list(src) if len(src) > 1 else src[0], dst, kind=kind, workers=workers,
                        overwrite=overwrite, progress=progress, scheduler=scheduler, checksum_sources=checksum_sources,
                        labels=labels, root=root, seed=seed, shuffle=not no_shuffle, max_shard_size=max_shard_size,
                        max_shard_samples=max_shard_samples, resize=resize, quality=quality, validate=validate,
                        strict=strict, tokens_field=tokens_field, label_field=label_field, image_field=image_field,
                        fields=fields, features_field=features_field, allow_nan=allow_nan)
    except KeyboardInterrupt as interrupt:
        how = "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted"
        click.echo(f"shardkit: {how}; the shards finished so far are kept: run the same command again to "
                   f"resume", err=True)
        sys.exit(128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT))
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    seconds = time.monotonic() - started
    rate = manifest.samples / seconds if seconds > 0 else 0.0
    ignored = (manifest.source or {}).get("ignored") or 0
    click.echo(f"{manifest.samples} samples, {len(manifest.shards)} shards, {manifest.bytes} bytes, "
               f"{len(manifest.skipped)} skipped, {f'{ignored} ignored, ' if ignored else ''}{seconds:.1f} s, "
               f"{rate:.0f} samples/s, {manifest.bytes / max(seconds, 1e-9) / 1e6:.1f} MB/s")
    if manifest.skipped:
        click.echo(f"skipped inputs are listed in {dst}/manifest.json (shardkit info {dst})", err=True)


@cli.command()
@click.argument("dst")
def info(dst) -> None:
    """Print the summary of the dataset in DST."""
    from .inspect import load_manifest, summary

    click.echo(summary(_run(load_manifest, dst)))


@cli.command()
@click.argument("dst")
def verify(dst) -> None:
    """Check every shard in DST (size, sha256, every sample decodes); exit 1 naming the bad ones."""
    from .inspect import verify as run_verify

    report = _run(run_verify, dst)
    if not report.ok:
        click.echo(str(report), err=True)
        sys.exit(1)
    click.echo(str(report))


def main() -> None:
    """Console entry point (``shardkit``, ``python -m shardkit``)."""
    cli(prog_name="shardkit")
