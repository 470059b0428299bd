#!/usr/bin/env bash
# The main job of kpersist, shown end to end on one machine.
echo "The demo (local control plane + operator + simulated fleet) is not built yet."
echo "Run ./test.sh for the test suites."
exit 1
