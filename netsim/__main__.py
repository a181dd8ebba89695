"""``python -m netsim run netsim/scenarios/NAME.toml --seed N [--out DIR]`` (see netsim.sim.run)."""

import sys

from netsim.sim.run import main

sys.exit(main())
