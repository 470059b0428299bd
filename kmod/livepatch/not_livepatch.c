// SPDX-License-Identifier: GPL-2.0
/*
 * not_livepatch - an ordinary module with no livepatch marker. The repository tooling
 * and the agent must refuse to treat it as a patch.
 */
#include <linux/module.h>
#include <linux/kernel.h>

static int not_livepatch_init(void)
{
	return 0;
}

static void not_livepatch_exit(void)
{
}

module_init(not_livepatch_init);
module_exit(not_livepatch_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kpersist test fixture: an ordinary, non-livepatch module");
