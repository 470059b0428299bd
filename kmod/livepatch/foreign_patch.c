// SPDX-License-Identifier: GPL-2.0
/*
 * foreign_patch - a livepatch of another tool (as a distribution's kpatch module or a
 * vendor's livepatch service would load), not in any kpersist repository. It replaces
 * loadavg_proc_show(), which no kpersist test patch touches, so /proc/loadavg reads
 * "foreign_patch" while it is live.
 *
 * Built with .replace = false, like a patch meant to sit beside others: loaded by hand
 * while a kpersist patch is live, both stay enabled. The agent must then refuse to load a
 * kpersist release (whose atomic replace would disable this patch) with ForeignLivepatch.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/seq_file.h>

static int foreign_loadavg_proc_show(struct seq_file *m, void *v)
{
	seq_puts(m, "foreign_patch\n");
	return 0;
}

static struct klp_func funcs[] = {
	{
		.old_name = "loadavg_proc_show",
		.new_func = foreign_loadavg_proc_show,
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
	.replace = false,
};

static int foreign_patch_init(void)
{
	return klp_enable_patch(&patch);
}

static void foreign_patch_exit(void)
{
}

module_init(foreign_patch_init);
module_exit(foreign_patch_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("another tool's livepatch: /proc/loadavg patched");
MODULE_INFO(livepatch, "Y");
