// SPDX-License-Identifier: GPL-2.0
/*
 * kpersist_v5 - a later cumulative release: kpersist_v2's functions under the marker
 * "kpersist v5" (/proc/cmdline reads it). The releases between (the stalling and the
 * crashing one) are bad, so this is what the fleet moves on to after them.
 */
#define KPERSIST_MARKER "kpersist v5"
#define KPERSIST_DESCRIPTION "kpersist test livepatch v5: /proc/cmdline and /proc/version patched"
#include "kpersist_v2.c"
