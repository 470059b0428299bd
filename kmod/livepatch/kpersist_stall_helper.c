// SPDX-License-Identifier: GPL-2.0
/*
 * kpersist_stall_helper - holds a livepatch transition open on purpose.
 *
 * An idle machine finishes a livepatch transition in milliseconds. To test what happens
 * when it does not, this module starts a kthread that sleeps inside
 * kpersist_stall_target(). While the thread is there, its stack holds the old function,
 * so a patch of kpersist_stall_target() (kpersist_stall_patch) cannot switch that task
 * and the transition stays open. Writing 1 to
 * /sys/module/kpersist_stall_helper/parameters/release lets the thread leave the
 * function; the transition then completes. parameters/inside reads 1 while the thread is
 * inside the function.
 */
#include <linux/module.h>
#include <linux/kernel.h>
#include <linux/kthread.h>
#include <linux/delay.h>
#include <linux/err.h>

static bool release;
module_param(release, bool, 0644);
MODULE_PARM_DESC(release, "write 1 to let the kthread leave kpersist_stall_target()");

static bool inside;
module_param(inside, bool, 0444);
MODULE_PARM_DESC(inside, "1 while the kthread sleeps inside kpersist_stall_target()");

static struct task_struct *thread;

/* Not static and not inlined: the livepatch finds it by name in this module. */
noinline void kpersist_stall_target(void)
{
	WRITE_ONCE(inside, true);
	while (!READ_ONCE(release) && !kthread_should_stop())
		msleep_interruptible(50);
	WRITE_ONCE(inside, false);
}

static int kpersist_stall_thread(void *data)
{
	kpersist_stall_target();
	/* Wait for unload outside the patched function, so later transitions can finish. */
	while (!kthread_should_stop())
		msleep_interruptible(50);
	return 0;
}

static int kpersist_stall_init(void)
{
	thread = kthread_run(kpersist_stall_thread, NULL, "kpersist_stall");
	return PTR_ERR_OR_ZERO(thread);
}

static void kpersist_stall_exit(void)
{
	kthread_stop(thread);
}

module_init(kpersist_stall_init);
module_exit(kpersist_stall_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kpersist test helper: a kthread that sleeps inside a patchable function");
