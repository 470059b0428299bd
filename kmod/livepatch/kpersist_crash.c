// SPDX-License-Identifier: GPL-2.0
/*
 * kpersist_crash - a cumulative release with a fatal bug on a path rarely taken: it
 * patches kpersist_v2's functions, /proc/cmdline reads "kpersist crash", and reading
 * /proc/version panics the kernel. Its transition completes like any good release's; the
 * crash comes later, when something reads /proc/version, as it would in production.
 */
#define KPERSIST_MARKER "kpersist crash"
#define KPERSIST_DESCRIPTION "kpersist test livepatch with a fatal bug: reading /proc/version panics"
#define KPERSIST_VERSION_PANICS
#include "kpersist_v2.c"
