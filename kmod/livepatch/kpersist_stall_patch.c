// SPDX-License-Identifier: GPL-2.0
/*
 * kpersist_stall_patch - patches kpersist_stall_target() in kpersist_stall_helper.
 *
 * Its transition cannot finish while the helper's kthread sleeps inside the old
 * function; see kpersist_stall_helper.c. The replacement returns at once.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>

static void kpersist_stall_target_replacement(void)
{
}

static struct klp_func funcs[] = {
	{
		.old_name = "kpersist_stall_target",
		.new_func = kpersist_stall_target_replacement,
	},
	{}
};

static struct klp_object objs[] = {
	{
		/* The function lives in the helper module, not in vmlinux. */
		.name = "kpersist_stall_helper",
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
MODULE_DESCRIPTION("kpersist test livepatch whose transition the stall helper holds open");
MODULE_INFO(livepatch, "Y");
