"""The ``msa-fast`` command line."""

from __future__ import annotations

import argparse
import sys


def _info(args: argparse.Namespace) -> int:
    from msa_fast.info import collect, format_info

    print(format_info(collect()))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from msa_fast.bench import BenchmarksNotFound, run

    try:
        return run(args.op, args.bench_args)
    except BenchmarksNotFound as exc:  # an installed copy without the benchmarks folder, or an unknown OP
        print(exc, file=sys.stderr)  # the message already starts with "msa-fast bench:"
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msa-fast", description="Fast fused ops and training for contrastive "
                                     "multimodal sentiment analysis.")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, available backends, whether the C++/CUDA kernels were built")
    info.set_defaults(func=_info)
    bench = sub.add_parser("bench", help="benchmark an op against eager and compiled PyTorch (benchmarks/bench_OP.py)")
    bench.add_argument("op", help="op family, e.g. cutoff, hard_concrete")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark script")
    bench.set_defaults(func=_bench)
    from msa_fast.data.cli import add_parser as add_data_parser  # light: argparse only

    add_data_parser(sub)
    from msa_fast.train.cli import add_parsers as add_train_parsers  # light: argparse only

    add_train_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
