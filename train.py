"""Fine-tune GPT-2 on the E2E NLG Challenge with LoRA: python train.py --rank 4 --targets q,v

The training loop arrives with the train.py issue; until then this only says so.
"""

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank r (default 4)")
    parser.add_argument("--targets", default="q,v", help="projections to adapt (default q,v)")
    parser.parse_args(argv)
    print("train.py: training is not implemented yet (see the open train.py issue)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
