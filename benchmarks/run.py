"""shardkit's benchmarks, one command:

    python benchmarks/run.py            # full run (about 15 min on 2 cores)
    python benchmarks/run.py --quick    # about two minutes
    python benchmarks/run.py --smoke    # seconds: the test suite's check that the harness works
    python benchmarks/run.py --only images_warm sequences

It generates its data under ``benchmarks/scratch/`` (kept between runs), runs every contender on
the same data in the same run, alternated and repeated, and writes ``<name>.json``, ``<name>.md``
and ``<name>.png`` to ``benchmarks/results/``. Figures are ratios against the baseline measured in
the same run. Every peer runs in quick and full runs: one that cannot (not installed, its side
environment not buildable) is a failed contender. MosaicML Streaming gets its own virtual
environment under the scratch folder, built at its first use (about a minute, once: kept with the
generated data and reused while the main environment and its pins stay the same); smoke runs
leave it out and say so. Exit status 1 if any contender failed (the results are written all the same).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import machine, report, targets  # noqa: E402
from benchmarks.config import make_config  # noqa: E402
from benchmarks.scenarios import (conversion, images, large, random_access, remote, sequences,  # noqa: E402
                                  tabular, writing)
from benchmarks.workspace import Workspace  # noqa: E402

HERE = Path(__file__).resolve().parent
log = logging.getLogger("benchmarks")

#: Every scenario, in the order a run goes through them.
SCENARIOS = {
    "images_warm": images.warm,
    "images_cold": images.cold,
    "images_large": large.large,
    "read_bandwidth": images.bandwidth,
    "images_remote": remote.remote,
    "images_remote_first_epoch": remote.first_epoch,
    "random_access_local": random_access.local,
    "random_access_http": random_access.remote,
    "sequences": sequences.throughput,
    "sequences_batched": sequences.batched,
    "sequences_padding": sequences.padding,
    "token_packing": sequences.packing,
    "tabular": tabular.tabular,
    "pairs_writing": writing.writing,
    "pairs_streaming": writing.streaming,
    "conversion": conversion.conversion,
    "conversion_many_files": conversion.many_files,
    "images_resume": images.resume,
    "workers_sweep": images.sweep,
    "memory_epochs": images.memory,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="mode", const="quick", help="about two minutes")
    size.add_argument("--smoke", action="store_const", dest="mode", const="smoke", help="seconds (tests)")
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), help="run these scenarios only")
    parser.add_argument("--name", help="results file name (default: the mode: full, quick or smoke)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where results go")
    parser.add_argument("--scratch", type=Path, default=HERE / "scratch", help="where data is generated")
    args = parser.parse_args(argv)
    args.mode = args.mode or "full"
    return args


def errors_of(sections: dict) -> list[str]:
    found = []
    for section in sections.values():
        for r in section.get("rows", []):
            if r.get("error"):
                found.append(f"{section['title']}: {r['contender']}: {r['error']}")
            for e in r.get("errors", []) or []:
                if e:
                    found.append(f"{section['title']}: {r['contender']}: {e}")
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = make_config(args.mode)
    started, t0 = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.monotonic()
    log.info("generating / reusing data under %s", args.scratch)
    ws = Workspace(cfg, args.scratch)
    sections, failures = {}, []
    try:
        for name in args.only or SCENARIOS:
            log.info("== %s", name)
            try:
                for section in SCENARIOS[name](ws):
                    sections[section["id"]] = section
            except Exception as err:  # noqa: BLE001 - one broken scenario must not lose the others
                log.error("scenario %s failed:\n%s", name, traceback.format_exc())
                failures.append(f"scenario {name}: {type(err).__name__}: {err}")
    finally:
        ws.close()
    doc = {"name": args.name or cfg.mode, "started": started, "duration_s": time.monotonic() - t0,
           "machine": machine.describe(), "side_environments": ws.side_environments(),
           "config": cfg.as_dict(), "sections": sections,
           "targets": targets.check(sections, cfg.cores)}
    doc["errors"] = failures + errors_of(sections)
    paths = report.write(doc, args.out)
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    print(report.markdown(doc))
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
