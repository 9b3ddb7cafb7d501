// SPDX-License-Identifier: GPL-2.0-only
/*
 * sdei_test: a test-only client of Linux's SDEI driver, for refvmm's guests.
 *
 * It registers and enables the SDEI events named by the "events" parameter
 * through the kernel's own SDEI client API, records every delivery from the
 * handler (NMI-like context) into a lock-free ring, and reports the records
 * through /proc/sdei_test and, from a deferred work item, the kernel log.
 * See README.md next to this file for the knobs and the output format.
 *
 * Since v5.8 the SDEI client API is not exported to modules. The functions
 * are found at load time through kallsyms_lookup_name(), whose address a
 * kprobe reveals. This is acceptable for a test module only.
 */

#define pr_fmt(fmt) "sdei_test: " fmt

#include <linux/arm_sdei.h>
#include <linux/atomic.h>
#include <linux/delay.h>
#include <linux/irqflags.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/percpu.h>
#include <linux/proc_fs.h>
#include <linux/ptrace.h>
#include <linux/seq_file.h>
#include <linux/timekeeping.h>
#include <linux/slab.h>
#include <linux/smp.h>
#include <linux/uaccess.h>
#include <linux/workqueue.h>

#define SDEI_TEST_MAX_EVENTS	16
#define SDEI_TEST_RING_SIZE	1024	/* a power of two */
#define SDEI_TEST_MAX_SPIN_MS	10000
#define SDEI_TEST_MAX_IRQOFF_MS	30000
#define SDEI_TEST_PRINT_PERIOD_MS 20
#define SDEI_TEST_UNREGISTER_TRIES 200

static unsigned int events[SDEI_TEST_MAX_EVENTS];
static int nr_events;
module_param_array(events, uint, &nr_events, 0444);
MODULE_PARM_DESC(events, "SDEI event numbers to register and enable at load");

static unsigned int spin_event;
module_param(spin_event, uint, 0644);
MODULE_PARM_DESC(spin_event, "Event number whose handler busy-waits (with spin_ms > 0)");

static unsigned int spin_ms;
module_param(spin_ms, uint, 0644);
MODULE_PARM_DESC(spin_ms, "How long the spin_event handler busy-waits, at most (0 = never)");

typedef int (*sdei_register_fn)(u32 event_num, sdei_event_callback *cb,
				 void *arg);
typedef int (*sdei_event_fn)(u32 event_num);
typedef unsigned long (*kallsyms_lookup_fn)(const char *name);

static sdei_register_fn do_register;
static sdei_event_fn do_unregister;
static sdei_event_fn do_enable;
static sdei_event_fn do_disable;

/* One registered event: what the handler is given as its argument. */
struct sdei_test_event {
	u32 num;
	int register_err;
	int enable_err;
	bool registered;
	bool enabled;
	atomic_t deliveries;
	atomic_t nested;
	atomic_t irqoff;
	atomic_t injected;
};

static struct sdei_test_event test_events[SDEI_TEST_MAX_EVENTS];

/*
 * One delivery. 'stamp' is seq + 1 once the other fields are complete and 0
 * while they are being written, so that a reader can tell a finished record
 * from one being written or overwritten.
 */
struct sdei_test_record {
	u64 stamp;
	u32 event;
	u32 cpu;
	u8 nested;
	u8 irqoff;
	u8 pstate_i;
	u8 injected;
};

static struct sdei_test_record ring[SDEI_TEST_RING_SIZE];
static atomic64_t next_seq = ATOMIC64_INIT(0);

/*
 * Per CPU: the handler nesting depth, the "IRQs are masked on purpose" flag
 * and a count of every delivery (real or injected) that the spinning handler
 * and the interrupt-masked window compare before and after.
 */
static DEFINE_PER_CPU(int, handler_depth);
static DEFINE_PER_CPU(int, irqoff_window);
static DEFINE_PER_CPU(unsigned int, cpu_deliveries);
/* Set while /proc/sdei_test_inject calls the handler on this CPU. */
static DEFINE_PER_CPU(int, injecting);

/* The last interrupt-masked window, for /proc/sdei_test_irqoff. */
static DEFINE_MUTEX(irqoff_lock);
static int last_window_cpu = -1;
static unsigned int last_window_ms;
static unsigned int last_window_deliveries;

/* Printing to the kernel log happens here, never in the handler. */
static u64 printed_seq;
static void sdei_test_print_fn(struct work_struct *work);
static DECLARE_DELAYED_WORK(print_work, sdei_test_print_fn);
static bool stopping;

static void record_delivery(u32 event, bool nested, bool irqoff, bool pstate_i,
			    bool injected)
{
	u64 seq = atomic64_fetch_inc(&next_seq);
	struct sdei_test_record *r = &ring[seq & (SDEI_TEST_RING_SIZE - 1)];

	WRITE_ONCE(r->stamp, 0);
	smp_wmb();
	WRITE_ONCE(r->event, event);
	WRITE_ONCE(r->cpu, smp_processor_id());
	WRITE_ONCE(r->nested, nested);
	WRITE_ONCE(r->irqoff, irqoff);
	WRITE_ONCE(r->pstate_i, pstate_i);
	WRITE_ONCE(r->injected, injected);
	smp_store_release(&r->stamp, seq + 1);
}

/* Copies record 'seq' out of the ring; false if it is not (or no longer) there. */
static bool read_record(u64 seq, struct sdei_test_record *out)
{
	const struct sdei_test_record *r =
		&ring[seq & (SDEI_TEST_RING_SIZE - 1)];

	if (smp_load_acquire(&r->stamp) != seq + 1)
		return false;
	out->event = READ_ONCE(r->event);
	out->cpu = READ_ONCE(r->cpu);
	out->nested = READ_ONCE(r->nested);
	out->irqoff = READ_ONCE(r->irqoff);
	out->pstate_i = READ_ONCE(r->pstate_i);
	out->injected = READ_ONCE(r->injected);
	smp_rmb();
	return READ_ONCE(r->stamp) == seq + 1;
}

/*
 * Busy-waits up to 'ms' of the guest's clock, ending early once another
 * delivery nested inside. It polls a deadline on the NMI-safe monotonic clock
 * rather than calling udelay(): with FEAT_WFxT udelay() waits in WFIT, and in
 * the emulated test bed a trapped WFIT reaches KVM looking like a plain WFI
 * (no deadline), so with interrupts masked it sleeps until some interrupt
 * happens to become pending. A deadline also means a snapshot taken mid-spin
 * checks that the guest's clock carries on from where it stopped.
 */
static void spin_in_handler(unsigned int ms)
{
	u64 deadline = ktime_get_mono_fast_ns() +
		       (u64)min(ms, (unsigned int)SDEI_TEST_MAX_SPIN_MS) * NSEC_PER_MSEC;
	unsigned int nested_before = this_cpu_read(cpu_deliveries);

	while (ktime_get_mono_fast_ns() < deadline) {
		cpu_relax();
		if (this_cpu_read(cpu_deliveries) != nested_before)
			break;
	}
}

/*
 * The SDEI callback: NMI-like context, interrupts masked, may interrupt any
 * code on this CPU (including printk). No locks, no sleeping, no printing.
 */
static int sdei_test_handler(u32 event, struct pt_regs *regs, void *arg)
{
	struct sdei_test_event *ev = arg;
	int depth = this_cpu_inc_return(handler_depth) - 1;
	bool irqoff = this_cpu_read(irqoff_window) != 0;
	bool pstate_i = regs && (regs->pstate & PSR_I_BIT);
	/* A real event that lands during an injection is not an injection. */
	bool injected = depth == 0 && this_cpu_read(injecting) != 0;
	unsigned int ms;

	/* Counts every delivery on this CPU: the spinner and irqoff windows watch it. */
	this_cpu_inc(cpu_deliveries);
	record_delivery(event, depth > 0, irqoff, pstate_i, injected);
	if (ev && injected) {
		atomic_inc(&ev->injected);
	} else if (ev) {
		atomic_inc(&ev->deliveries);
		if (depth > 0)
			atomic_inc(&ev->nested);
		if (irqoff)
			atomic_inc(&ev->irqoff);
	}

	ms = READ_ONCE(spin_ms);
	if (ms && event == READ_ONCE(spin_event))
		spin_in_handler(ms);

	this_cpu_dec(handler_depth);
	return 0;
}

static void format_record(char *buf, size_t len, u64 seq,
			  const struct sdei_test_record *r)
{
	snprintf(buf, len,
		 "sdei_test: event=0x%x cpu=%u nested=%u seq=%llu irqoff=%u pstate_i=%u%s",
		 r->event, r->cpu, r->nested, seq, r->irqoff, r->pstate_i,
		 r->injected ? " injected=1" : "");
}

/* Prints the records the log has not seen yet; only this work item prints them. */
static void sdei_test_flush_log(void)
{
	u64 end = atomic64_read(&next_seq);
	struct sdei_test_record r;
	char line[128];

	if (end - printed_seq > SDEI_TEST_RING_SIZE) {
		pr_info("dropped=%llu (the ring holds %u records)\n",
			end - printed_seq - SDEI_TEST_RING_SIZE,
			SDEI_TEST_RING_SIZE);
		printed_seq = end - SDEI_TEST_RING_SIZE;
	}
	while (printed_seq < end) {
		/* A record still being written: retry on the next run. */
		if (!read_record(printed_seq, &r))
			break;
		format_record(line, sizeof(line), printed_seq, &r);
		printk(KERN_INFO "%s\n", line);
		printed_seq++;
	}
}

static void sdei_test_print_fn(struct work_struct *work)
{
	sdei_test_flush_log();
	if (!READ_ONCE(stopping))
		schedule_delayed_work(&print_work,
				      msecs_to_jiffies(SDEI_TEST_PRINT_PERIOD_MS));
}

static int sdei_test_show(struct seq_file *m, void *v)
{
	u64 end = atomic64_read(&next_seq);
	u64 start = end > SDEI_TEST_RING_SIZE ? end - SDEI_TEST_RING_SIZE : 0;
	struct sdei_test_record r;
	char line[128];
	u64 seq;
	int i;

	for (seq = start; seq < end; seq++) {
		if (!read_record(seq, &r))
			continue;
		format_record(line, sizeof(line), seq, &r);
		seq_printf(m, "%s\n", line);
	}
	for (i = 0; i < nr_events; i++) {
		const struct sdei_test_event *ev = &test_events[i];

		seq_printf(m,
			   "sdei_test: total event=0x%x registered=%d register_err=%d enable_err=%d deliveries=%d nested=%d irqoff=%d injected=%d\n",
			   ev->num, ev->registered, ev->register_err,
			   ev->enable_err, atomic_read(&ev->deliveries),
			   atomic_read(&ev->nested), atomic_read(&ev->irqoff),
			   atomic_read(&ev->injected));
	}
	seq_printf(m, "sdei_test: total records=%llu dropped=%llu\n", end,
		   start);
	return 0;
}

static int sdei_test_open(struct inode *inode, struct file *file)
{
	return single_open(file, sdei_test_show, NULL);
}

static const struct proc_ops sdei_test_proc_ops = {
	.proc_open = sdei_test_open,
	.proc_read = seq_read,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
};

static int sdei_test_irqoff_show(struct seq_file *m, void *v)
{
	mutex_lock(&irqoff_lock);
	if (last_window_cpu < 0)
		seq_puts(m, "sdei_test: irqoff none\n");
	else
		seq_printf(m, "sdei_test: irqoff cpu=%d ms=%u deliveries=%u\n",
			   last_window_cpu, last_window_ms,
			   last_window_deliveries);
	mutex_unlock(&irqoff_lock);
	return 0;
}

static int sdei_test_irqoff_open(struct inode *inode, struct file *file)
{
	return single_open(file, sdei_test_irqoff_show, NULL);
}

/*
 * Writing N masks IRQs on the writer's CPU for up to N ms; the window closes
 * early once an event has been delivered inside it.
 */
static ssize_t sdei_test_irqoff_write(struct file *file, const char __user *buf,
				      size_t count, loff_t *ppos)
{
	unsigned int ms, before, seen, waited;
	unsigned long flags;
	int cpu, err;

	err = kstrtouint_from_user(buf, count, 0, &ms);
	if (err)
		return err;
	if (ms > SDEI_TEST_MAX_IRQOFF_MS)
		return -EINVAL;

	mutex_lock(&irqoff_lock);
	local_irq_save(flags);
	cpu = smp_processor_id();
	before = this_cpu_read(cpu_deliveries);
	this_cpu_write(irqoff_window, 1);
	for (waited = 0; waited < ms; waited++) {
		if (this_cpu_read(cpu_deliveries) != before)
			break;
		mdelay(1);
	}
	this_cpu_write(irqoff_window, 0);
	seen = this_cpu_read(cpu_deliveries) - before;
	local_irq_restore(flags);
	last_window_cpu = cpu;
	last_window_ms = waited;
	last_window_deliveries = seen;
	mutex_unlock(&irqoff_lock);

	pr_info("irqoff cpu=%d ms=%u deliveries=%u\n", cpu, waited, seen);
	return count;
}

static const struct proc_ops sdei_test_irqoff_proc_ops = {
	.proc_open = sdei_test_irqoff_open,
	.proc_read = seq_read,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
	.proc_write = sdei_test_irqoff_write,
};

/*
 * Writing an event number calls the handler directly, with IRQs masked, as a
 * self-test of the recording and reporting path when no firmware delivers
 * anything. Such records carry "injected=1"; they prove nothing about SDEI.
 */
static ssize_t sdei_test_inject_write(struct file *file, const char __user *buf,
				      size_t count, loff_t *ppos)
{
	struct sdei_test_event *ev = NULL;
	struct pt_regs *regs;
	unsigned long flags;
	unsigned int num;
	int err, i;

	err = kstrtouint_from_user(buf, count, 0, &num);
	if (err)
		return err;
	for (i = 0; i < nr_events; i++)
		if (test_events[i].num == num)
			ev = &test_events[i];
	regs = kzalloc(sizeof(*regs), GFP_KERNEL);
	if (!regs)
		return -ENOMEM;
	/* What the handler would see: it interrupted EL1 code with IRQs masked. */
	regs->pstate = PSR_MODE_EL1h | PSR_I_BIT;

	local_irq_save(flags);
	this_cpu_write(injecting, 1);
	sdei_test_handler(num, regs, ev);
	this_cpu_write(injecting, 0);
	local_irq_restore(flags);
	kfree(regs);
	return count;
}

static const struct proc_ops sdei_test_inject_proc_ops = {
	.proc_write = sdei_test_inject_write,
};

/* The address of kallsyms_lookup_name(), as a kprobe on it reports it. */
static kallsyms_lookup_fn find_kallsyms_lookup_name(void)
{
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	kallsyms_lookup_fn fn;
	int err;

	err = register_kprobe(&kp);
	if (err) {
		pr_err("kprobe on kallsyms_lookup_name failed: err=%d\n", err);
		return NULL;
	}
	fn = (kallsyms_lookup_fn)kp.addr;
	unregister_kprobe(&kp);
	return fn;
}

static int resolve_sdei_api(void)
{
	kallsyms_lookup_fn lookup = find_kallsyms_lookup_name();
	static const char *const names[] = {
		"sdei_event_register", "sdei_event_unregister",
		"sdei_event_enable", "sdei_event_disable",
	};
	unsigned long addr[ARRAY_SIZE(names)];
	int i;

	if (!lookup)
		return -ENOENT;
	for (i = 0; i < ARRAY_SIZE(names); i++) {
		addr[i] = lookup(names[i]);
		if (!addr[i]) {
			pr_err("symbol %s not found (is the SDEI driver built in?)\n",
			       names[i]);
			return -ENOENT;
		}
	}
	do_register = (sdei_register_fn)addr[0];
	do_unregister = (sdei_event_fn)addr[1];
	do_enable = (sdei_event_fn)addr[2];
	do_disable = (sdei_event_fn)addr[3];
	pr_info("resolved the SDEI client API through kallsyms\n");
	return 0;
}

static void release_event(struct sdei_test_event *ev)
{
	int err = 0, tries;

	if (ev->enabled) {
		err = do_disable(ev->num);
		pr_info("disabled event=0x%x err=%d\n", ev->num, err);
		ev->enabled = false;
	}
	if (!ev->registered)
		return;
	/* The firmware says "pending" while a handler runs: try again. */
	for (tries = 0; tries < SDEI_TEST_UNREGISTER_TRIES; tries++) {
		err = do_unregister(ev->num);
		if (err != -EINPROGRESS && err != -EBUSY)
			break;
		msleep(10);
	}
	pr_info("unregistered event=0x%x err=%d\n", ev->num, err);
	if (err)
		pr_err("event=0x%x is still registered: its handler points into a module being unloaded\n",
		       ev->num);
	ev->registered = false;
}

static void remove_proc_files(void)
{
	remove_proc_entry("sdei_test_inject", NULL);
	remove_proc_entry("sdei_test_irqoff", NULL);
	remove_proc_entry("sdei_test", NULL);
}

static int __init sdei_test_init(void)
{
	int err, i;

	err = resolve_sdei_api();
	if (err)
		return err;

	if (!proc_create("sdei_test", 0444, NULL, &sdei_test_proc_ops))
		return -ENOMEM;
	if (!proc_create("sdei_test_irqoff", 0644, NULL,
			 &sdei_test_irqoff_proc_ops)) {
		remove_proc_entry("sdei_test", NULL);
		return -ENOMEM;
	}
	if (!proc_create("sdei_test_inject", 0200, NULL,
			 &sdei_test_inject_proc_ops)) {
		remove_proc_entry("sdei_test_irqoff", NULL);
		remove_proc_entry("sdei_test", NULL);
		return -ENOMEM;
	}
	schedule_delayed_work(&print_work, 0);

	for (i = 0; i < nr_events; i++) {
		struct sdei_test_event *ev = &test_events[i];

		ev->num = events[i];
		ev->register_err = do_register(ev->num, sdei_test_handler, ev);
		pr_info("registered event=0x%x err=%d\n", ev->num,
			ev->register_err);
		if (ev->register_err)
			continue;
		ev->registered = true;
		ev->enable_err = do_enable(ev->num);
		pr_info("enabled event=0x%x err=%d\n", ev->num, ev->enable_err);
		if (!ev->enable_err)
			ev->enabled = true;
	}
	return 0;
}

static void __exit sdei_test_exit(void)
{
	int i;

	for (i = 0; i < nr_events; i++)
		release_event(&test_events[i]);
	remove_proc_files();
	WRITE_ONCE(stopping, true);
	cancel_delayed_work_sync(&print_work);
	sdei_test_flush_log();
}

module_init(sdei_test_init);
module_exit(sdei_test_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Test-only SDEI client for refvmm guests");
