// SPDX-License-Identifier: GPL-2.0
/*
 * kpersist_fail - a livepatch that the kernel refuses to enable.
 *
 * It names a function that does not exist, so klp_enable_patch() fails with -EINVAL
 * ("livepatch: symbol '...' not found in symbol table") and the module never loads.
 * The agent must report that failure with the kernel's error.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>

static void kpersist_no_such_function_replacement(void)
{
}

static struct klp_func funcs[] = {
	{
		.old_name = "kpersist_no_such_function",
		.new_func = kpersist_no_such_function_replacement,
	},
	{}
};

static struct klp_object objs[] = {
	{
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
MODULE_DESCRIPTION("kpersist test livepatch that cannot be enabled");
MODULE_INFO(livepatch, "Y");
