// SPDX-License-Identifier: GPL-2.0
/*
 * kpersist_stack - a release built the wrong way: kpersist_v2's functions, but with
 * .replace = false, so enabling it leaves the live kpersist patch enabled underneath
 * (the two stack) instead of retiring it. The agent must see that after the transition,
 * take this patch back out and fail the apply with NotCumulative.
 *
 * /proc/cmdline reads "kpersist stack" while it is live, so a test can tell which patch
 * the kernel runs.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>
#include <linux/utsname.h>

static int kpersist_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", "kpersist stack");
	return 0;
}

static int kpersist_version_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "kpersist stack %s version %s %s\n", utsname()->sysname,
		   utsname()->release, utsname()->version);
	return 0;
}

static struct klp_func funcs[] = {
	{
		.old_name = "cmdline_proc_show",
		.new_func = kpersist_cmdline_proc_show,
	},
	{
		.old_name = "version_proc_show",
		.new_func = kpersist_version_proc_show,
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
	/* The mistake under test: not cumulative. */
	.replace = false,
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
MODULE_DESCRIPTION("kpersist test livepatch built without atomic replace (stacks)");
MODULE_INFO(livepatch, "Y");
