"""Entrypoint for `ray job submit`: runs a study on the cluster the job runs in.

    ray job submit --address http://HEAD:8265 --working-dir . -- python jobs/run_study.py STUDY.yaml [--stages sample]

Exits 0 when every stage finished, 2 on bad input, 1 on environment failures (storage, network,
cluster); either failure is one line on stderr.
Ray does not retry jobs: rerunning the same command resumes, skipping completed work.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study")
    parser.add_argument("--stages", default=None, help="comma-separated stages (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)

    from ganscale.errors import describe
    from ganscale.pipeline import run_study
    from ganscale.study import load_study

    try:
        study = load_study(args.study)
        results = run_study(study, args.stages.split(",") if args.stages else None)
    except Exception as e:
        logging.getLogger("ganscale").debug("failure", exc_info=True)
        line, code = describe(e)
        print(f"error: {line}", file=sys.stderr)
        return code
    for name, result in results.items():
        print(f"{name}: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
