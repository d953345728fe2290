"""The synthetic target's fixed file: `python prepare.py --fingerprint` names its (fake) data."""

import hashlib
import json
import sys

TIME_BUDGET = 1  # seconds per trial (the synthetic train.py ignores most of it)

if __name__ == "__main__":
    if "--fingerprint" not in sys.argv:
        print("the synthetic target has no data to prepare", file=sys.stderr)
        sys.exit(0)
    print(json.dumps({"fingerprint": hashlib.sha256(b"synthetic-data-v1").hexdigest(),
                      "profile": "synthetic", "time_budget": TIME_BUDGET}))
