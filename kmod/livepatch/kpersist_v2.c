// SPDX-License-Identifier: GPL-2.0
/*
 * kpersist_v2 - the second, cumulative release of the kpersist test patch.
 *
 * A superset of v1: /proc/cmdline reads "kpersist v2", and /proc/version gains a
 * "kpersist v2" prefix. With .replace = true, enabling it retires v1 in the same
 * transition, so v1's /sys/kernel/livepatch entry disappears once it completes.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>
#include <linux/utsname.h>

/*
 * Later releases built from this file set their own marker (kpersist_v5.c), and one a
 * fatal bug (kpersist_crash.c).
 */
#ifndef KPERSIST_MARKER
#define KPERSIST_MARKER "kpersist v2"
#define KPERSIST_DESCRIPTION "kpersist test livepatch v2: /proc/cmdline and /proc/version patched"
#endif

static int kpersist_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", KPERSIST_MARKER);
	return 0;
}

static int kpersist_version_proc_show(struct seq_file *m, void *v)
{
#ifdef KPERSIST_VERSION_PANICS
	panic("%s: the patched version_proc_show was called", KBUILD_MODNAME);
#else
	seq_printf(m, "%s %s version %s %s\n", KPERSIST_MARKER, utsname()->sysname,
		   utsname()->release, utsname()->version);
	return 0;
#endif
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
