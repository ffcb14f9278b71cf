import os
import sys

from infanite.cli.main import main

code = main()
if "RANK" in os.environ and os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
    # A torchrun worker, its work done and every file closed: leave without running C++ static destructors, which
    # with gloo can abort the process at interpreter exit (measured: about 1 run in 10 on a loaded 2-core machine,
    # "terminate called without an active exception" after destroy_process_group).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
