// SPDX-License-Identifier: GPL-2.0
/*
 * kpersist_badvermagic - v1's code under its own module name. The Makefile rewrites its
 * vermagic after the build to claim another kernel release (BAD_RELEASE), which is what a
 * patch built for the wrong kernel looks like. The kernel still loads it when module
 * versions match, so the agent must refuse it on its own check.
 */
#define KPERSIST_CMDLINE_MARKER "kpersist badvermagic"
#define KPERSIST_DESCRIPTION "kpersist test livepatch v1 claiming another kernel release"
#include "kpersist_v1.c"
