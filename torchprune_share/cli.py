"""The ``torchprune-share`` command line: ``demo`` (the demo application) and ``report``.

The demo is imported only when ``demo`` runs, so that ``report`` and ``--help`` load the
library alone.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["main"]

EPILOG = """examples:
  torchprune-share demo                         # digits, LeNet-300-100, outputs in ./torchprune-share-out/
  torchprune-share demo --model lenet5 --seed 1 --quiet
  torchprune-share demo --data mnist --data-dir ../shared/data/mnist
  torchprune-share report torchprune-share-out/model.tpsc
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchprune-share",
        description="Deep Compression for PyTorch: pruning, trained weight sharing, Huffman coding.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="run the whole Deep Compression pipeline on a small data set",
        description="train -> pruning sensitivity -> AGP pruning -> bits analysis -> weight "
        "sharing -> codebook fine-tuning -> compressed file -> reload and re-evaluate",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--model", choices=["lenet300", "lenet5"], default="lenet300")
    demo.add_argument("--data", choices=["digits", "mnist"], default="digits")
    demo.add_argument("--data-dir", default=None, help="folder with the MNIST IDX .gz files")
    demo.add_argument("--out", default="torchprune-share-out", help="output folder")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--max-drop",
        type=float,
        default=2.0,
        help="accuracy points (validation) a layer may lose in each scan (default 2)",
    )
    demo.add_argument(
        "--threads", type=int, default=None, help="torch threads (default 1 on digits)"
    )
    demo.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default per data set)"
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bars, no table")
    report = sub.add_parser(
        "report", help="print the compression report of a compressed model file"
    )
    report.add_argument("file")
    report.add_argument("--csv", default=None, help="also write the report as CSV")
    report.add_argument("--markdown", default=None, help="also write the report as Markdown")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Args:
        argv (sequence of str, optional): the arguments after the program name.

    Returns:
        0 on success, 2 for a missing or unreadable file (the message goes to stderr).

    Example:
        >>> from torchprune_share import level_prune, save_compressed
        >>> _ = save_compressed(level_prune(nn.Linear(20, 10), "weight", 0.5), "m.tpsc")
        >>> main(["report", "m.tpsc"])  # doctest: +ELLIPSIS
        tensor ... total ...
        0
        >>> main(["report", "missing.tpsc"])
        2
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.command != "demo" or args.quiet else logging.INFO,
        format="%(message)s",
    )
    if args.command == "demo":
        from .demo import DemoConfig, run_demo  # the demo stays out of `report`

        config = DemoConfig(
            model=args.model,
            data=args.data,
            data_dir=args.data_dir,
            out=args.out,
            seed=args.seed,
            max_drop=args.max_drop,
            threads=args.threads,
            epochs=args.epochs,
            progress=not args.quiet,
        )
        try:
            result = run_demo(config)
        except FileNotFoundError as err:
            print(f"torchprune-share: {err}", file=sys.stderr)
            return 2
        if not args.quiet:
            print(result["table"])
        return 0
    from .fileformat import CompressedFileError, compression_report

    try:
        report = compression_report(args.file)
    except (OSError, CompressedFileError) as err:
        print(f"torchprune-share: {err}", file=sys.stderr)
        return 2
    print(report.to_table())
    if args.csv:
        report.to_csv(args.csv)
    if args.markdown:
        report.to_markdown(args.markdown)
    return 0
