// SPDX-License-Identifier: GPL-2.0
/*
 * kpersist_v1 - the first release of the kpersist test patch.
 *
 * Replaces cmdline_proc_show() so that /proc/cmdline reads "kpersist v1". A test (or a
 * person) can tell in one read whether the patch is live. It is cumulative
 * (.replace = true): enabling it atomically replaces whatever kpersist patch was live.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

#ifndef KPERSIST_CMDLINE_MARKER
#define KPERSIST_CMDLINE_MARKER "kpersist v1"
#define KPERSIST_DESCRIPTION "kpersist test livepatch v1: /proc/cmdline reads 'kpersist v1'"
#endif

static int kpersist_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", KPERSIST_CMDLINE_MARKER);
	return 0;
}

static struct klp_func funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = kpersist_cmdline_proc_show,
	},
	{}
};

static struct klp_object objs[] = {
	{
		/* A NULL name means the object is vmlinux itself. */
		.funcs = funcs,
	},
	{}
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
	.replace = true,
};

static int kpersist_init(void)
{
	return klp_enable_patch(&patch);
}

static void kpersist_exit(void)
{
}

module_init(kpersist_init);
module_exit(kpersist_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION(KPERSIST_DESCRIPTION);
MODULE_INFO(livepatch, "Y");
