// SPDX-License-Identifier: GPL-2.0
/*
 * C glue of the checkpoint module: the misc device and its file_operations (6.12's Rust
 * crate has no miscdevice/file abstractions yet), and one-line wrappers for kernel
 * facilities that are static inlines or macros and so unreachable from Rust. No logic
 * here: every operation forwards to ckpt_main.rs, except the output hold's netfilter
 * hooks at the end (packet parsing on kernel structs the Rust crate does not expose).
 */
#include <linux/module.h>
#include <linux/miscdevice.h>
#include <linux/fs.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>
#include <linux/mm.h>
#include <linux/mutex.h>
#include <linux/sched.h>
#include <linux/sched/clock.h>
#include <linux/cpumask.h>
#include <linux/timekeeping.h>
#include <linux/capability.h>
#include <linux/mmzone.h>
#include <linux/page-flags.h>
#include <linux/pid.h>
#include <linux/sched/signal.h>
#include <linux/workqueue.h>
#include <linux/netfilter.h>
#include <linux/netfilter_ipv4.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <net/ip.h>
#include <net/net_namespace.h>
#include <asm/xen/page.h>
#include <asm/xen/hypercall.h>
#include <xen/xen.h>
#include <xen/interface/xen.h>

/* Implemented in Rust (ckpt_main.rs); dev is the pointer given to ckpt_shim_register. */
long ckpt_rs_ioctl(const void *dev, unsigned long file, unsigned int cmd, unsigned long arg);
long ckpt_rs_read(const void *dev, unsigned long file, char __user *buf, size_t len, loff_t *pos);
void ckpt_rs_release(const void *dev, unsigned long file);

/* Called from Rust (declared here to keep -Wmissing-prototypes quiet). */
int ckpt_shim_register(const void *dev);
void ckpt_shim_deregister(void);
void *ckpt_vzalloc(unsigned long size);
void ckpt_vfree(void *p);
unsigned long ckpt_copy_to_user(void __user *to, const void *from, unsigned long n);
unsigned long ckpt_copy_from_user(void *to, const void __user *from, unsigned long n);
void *ckpt_pfn_to_virt(unsigned long pfn);
unsigned long ckpt_virt_to_pfn(const void *v);
unsigned long ckpt_vmalloc_to_pfn(const void *v);
void ckpt_cond_resched(void);
unsigned long long ckpt_now_ns(void);
unsigned int ckpt_online_cpus(void);
int ckpt_xen_pv(void);
unsigned long ckpt_m2p_entries(void);
const unsigned long *ckpt_m2p(void);
unsigned long long ckpt_clock_ns(void);
int ckpt_pin_probe(unsigned long mfn, unsigned int pin_cmd);
int ckpt_pin_probe_many(const unsigned long *mfns, const unsigned int *cmds, unsigned int n,
			unsigned char *pinned);
unsigned long ckpt_read_cr0(void);
int ckpt_unpin_table(unsigned long mfn);
int ckpt_hold_arm(__be32 saddr, __be32 daddr, __be16 sport, __be16 dport);
void ckpt_hold_disarm(void);
unsigned long long ckpt_hold_release(void);
unsigned long ckpt_read_cr4(void);
unsigned long ckpt_free_run(unsigned long pfn);
unsigned long ckpt_buddy_run(struct page *page, unsigned long pfn);
int ckpt_throttle_set(int pid, unsigned int stop_ms, unsigned int period_ms, u64 *stopped);
int ckpt_throttle_release(int pid, u64 *stopped);
void ckpt_throttle_release_all(void);

/*
 * The module's state (a Rust Mutex<State> owned by the module object), set before the
 * device is registered and valid until it is deregistered.
 */
static const void *ckpt_dev_state;

/*
 * Orders callers before they take the Rust mutex. Interruptible on purpose: a process
 * waiting here during a capture must stay freezable, or Linux's suspend sequence (which the
 * capture runs) could not freeze it and the capture would fail.
 */
static DEFINE_MUTEX(ckpt_lock);

static int ckpt_open(struct inode *inode, struct file *file)
{
	return capable(CAP_SYS_ADMIN) ? 0 : -EPERM;
}

static int ckpt_release(struct inode *inode, struct file *file)
{
	mutex_lock(&ckpt_lock);
	ckpt_rs_release(ckpt_dev_state, (unsigned long)file);
	mutex_unlock(&ckpt_lock);
	return 0;
}

static long ckpt_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	long ret;

	if (mutex_lock_interruptible(&ckpt_lock))
		return -EINTR;
	ret = ckpt_rs_ioctl(ckpt_dev_state, (unsigned long)file, cmd, arg);
	mutex_unlock(&ckpt_lock);
	return ret;
}

static ssize_t ckpt_read(struct file *file, char __user *buf, size_t len, loff_t *pos)
{
	long ret;

	if (mutex_lock_interruptible(&ckpt_lock))
		return -EINTR;
	ret = ckpt_rs_read(ckpt_dev_state, (unsigned long)file, buf, len, pos);
	mutex_unlock(&ckpt_lock);
	return ret;
}

static const struct file_operations ckpt_fops = {
	.owner = THIS_MODULE,
	.open = ckpt_open,
	.release = ckpt_release,
	.read = ckpt_read,
	.unlocked_ioctl = ckpt_ioctl,
	.llseek = default_llseek,
};

static struct miscdevice ckpt_dev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "checkpoint",
	.fops = &ckpt_fops,
	.mode = 0600,
};

int ckpt_shim_register(const void *dev)
{
	ckpt_dev_state = dev;
	return misc_register(&ckpt_dev);
}
void ckpt_shim_deregister(void) { misc_deregister(&ckpt_dev); }

/* Wrappers for inlines and macros. */
/* Big buffers (snapshot) must fail with ENOMEM, not wake the OOM killer on the caller. */
void *ckpt_vzalloc(unsigned long size)
{
	return __vmalloc(size, GFP_KERNEL | __GFP_ZERO | __GFP_RETRY_MAYFAIL | __GFP_NOWARN);
}
void ckpt_vfree(void *p) { vfree(p); }
unsigned long ckpt_copy_to_user(void __user *to, const void *from, unsigned long n)
{
	return copy_to_user(to, from, n);
}
unsigned long ckpt_copy_from_user(void *to, const void __user *from, unsigned long n)
{
	return copy_from_user(to, from, n);
}
void *ckpt_pfn_to_virt(unsigned long pfn) { return __va(PFN_PHYS(pfn)); }
unsigned long ckpt_virt_to_pfn(const void *v) { return PFN_DOWN(__pa(v)); }
unsigned long ckpt_vmalloc_to_pfn(const void *v) { return vmalloc_to_pfn(v); }
void ckpt_cond_resched(void) { cond_resched(); }
unsigned long long ckpt_now_ns(void) { return ktime_get_ns(); }
unsigned int ckpt_online_cpus(void) { return num_online_cpus(); }
int ckpt_xen_pv(void) { return xen_pv_domain(); }
unsigned long ckpt_m2p_entries(void) { return machine_to_phys_nr; }
const unsigned long *ckpt_m2p(void) { return machine_to_phys_mapping; }
unsigned long long ckpt_clock_ns(void) { return sched_clock(); }

/*
 * Is this table page pinned in Xen? Pinning succeeds only on a page that is not pinned
 * yet (Xen refuses a second pin), so a success is undone at once and means "not pinned".
 */
int ckpt_pin_probe(unsigned long mfn, unsigned int pin_cmd)
{
	struct mmuext_op op = { .cmd = pin_cmd, .arg1.mfn = mfn };

	if (HYPERVISOR_mmuext_op(&op, 1, NULL, DOMID_SELF))
		return 1;
	op.cmd = MMUEXT_UNPIN_TABLE;
	HYPERVISOR_mmuext_op(&op, 1, NULL, DOMID_SELF);
	return 0;
}

#define CKPT_PROBE_BATCH 32
static struct multicall_entry ckpt_probe_mc[CKPT_PROBE_BATCH];
static struct mmuext_op ckpt_probe_ops[2 * CKPT_PROBE_BATCH];

/*
 * ckpt_pin_probe for up to CKPT_PROBE_BATCH tables in one multicall (the capture probes
 * every table in its pause): per table one mmuext_op call of two ops, pin then unpin. Xen
 * ends a call at its first failing op, so a refused pin leaves that table as it was, and
 * the other calls of the batch run regardless. Sets pinned[k] to what ckpt_pin_probe would
 * return for table k. Returns non-zero if the multicall itself failed (then every pair
 * either ran whole or not at all: the caller asks again one by one). Capture routine only:
 * the buffers are static and Xen writes the results into them.
 */
int ckpt_pin_probe_many(const unsigned long *mfns, const unsigned int *cmds, unsigned int n,
			unsigned char *pinned)
{
	unsigned int k;

	if (n > CKPT_PROBE_BATCH)
		return -1;
	for (k = 0; k < n; k++) {
		ckpt_probe_ops[2 * k] = (struct mmuext_op){ .cmd = cmds[k], .arg1.mfn = mfns[k] };
		ckpt_probe_ops[2 * k + 1] =
			(struct mmuext_op){ .cmd = MMUEXT_UNPIN_TABLE, .arg1.mfn = mfns[k] };
		MULTI_mmuext_op(&ckpt_probe_mc[k], &ckpt_probe_ops[2 * k], 2, NULL, DOMID_SELF);
	}
	if (HYPERVISOR_multicall(ckpt_probe_mc, n))
		return -1;
	for (k = 0; k < n; k++)
		pinned[k] = ckpt_probe_mc[k].result != 0;
	return 0;
}

/* Drop the pin on a table this guest does not use (inflate-loader's L4 after a restore in
 * place), so Xen frees the tables and every frame they still reference. */
int ckpt_unpin_table(unsigned long mfn)
{
	struct mmuext_op op = { .cmd = MMUEXT_UNPIN_TABLE, .arg1.mfn = mfn };

	return HYPERVISOR_mmuext_op(&op, 1, NULL, DOMID_SELF);
}

/* The guest's view of CR0/CR4 (Xen keeps it per vCPU; a restore must get it back, or
 * e.g. CR4.FSGSBASE is off and the first rdfsbase faults). */
unsigned long ckpt_read_cr0(void) { return read_cr0(); }
unsigned long ckpt_read_cr4(void) { return __read_cr4(); }

/*
 * Free-page elision: the number of pages of the buddy allocator's free block that starts at
 * @pfn, 0 if none starts there. No zone lock: a hint in process context (a block may be
 * allocated right after; its pages are then written, so the tracker sees them dirty), exact
 * in stop_machine (no CPU holds a zone lock there). The order is range-checked because an
 * unlocked read may see a block being split.
 */
unsigned long ckpt_free_run(unsigned long pfn)
{
	return pfn_valid(pfn) ? ckpt_buddy_run(pfn_to_page(pfn), pfn) : 0;
}

/* The same for a valid pfn and its page (callers that checked pfn_valid() already). */
unsigned long ckpt_buddy_run(struct page *page, unsigned long pfn)
{
	unsigned long order;

	if (!PageBuddy(page))
		return 0;
	order = READ_ONCE(page->private);	/* the buddy order, see set_buddy_order() */
	if (order > MAX_PAGE_ORDER || (pfn & ((1UL << order) - 1)))
		return 0;
	return 1UL << order;
}

/*
 * Throttling (docs/checkpoint-abi.md "Throttle"): a few processes the session owner picked
 * (the ones dirtying most) are stopped stop_ms out of every period_ms with SIGSTOP/SIGCONT,
 * sent by a self-rearming work item every tick. Glue over the kernel's signal and workqueue
 * machinery, which 6.12's Rust crate does not wrap; ckpt_main.rs validates the arguments and
 * ends every throttle with the session, so a process is never left stopped by a session
 * that is gone (checkpointd killed, or a revived copy whose session ended).
 */
#define CKPT_THROTTLE_MAX 8
#define CKPT_THROTTLE_TICK_MS 10
static struct ckpt_throttle {
	struct pid *pid;		/* NULL: free slot */
	unsigned int stop_ms, period_ms;
	bool stopped;
	u64 phase_start;		/* ns, start of the current stop or run phase */
	u64 stopped_ns;			/* completed stop phases */
} ckpt_thr[CKPT_THROTTLE_MAX];
static DEFINE_MUTEX(ckpt_thr_lock);
static void ckpt_thr_tick(struct work_struct *w);
static DECLARE_DELAYED_WORK(ckpt_thr_work, ckpt_thr_tick);

static u64 ckpt_thr_total(const struct ckpt_throttle *t, u64 now)
{
	return t->stopped_ns + (t->stopped ? now - t->phase_start : 0);
}

static void ckpt_thr_run(struct ckpt_throttle *t, u64 now)
{
	if (t->stopped) {
		kill_pid(t->pid, SIGCONT, 1);
		t->stopped_ns += now - t->phase_start;
		t->stopped = false;
		t->phase_start = now;
	}
}

static void ckpt_thr_tick(struct work_struct *w)
{
	u64 now = ktime_get_ns();
	bool any = false;
	int i;

	mutex_lock(&ckpt_thr_lock);
	for (i = 0; i < CKPT_THROTTLE_MAX; i++) {
		struct ckpt_throttle *t = &ckpt_thr[i];
		u64 len;

		if (!t->pid)
			continue;
		any = true;
		len = (u64)(t->stopped ? t->stop_ms : t->period_ms - t->stop_ms) * NSEC_PER_MSEC;
		if (now - t->phase_start < len)
			continue;
		if (t->stopped) {
			ckpt_thr_run(t, now);
		} else if (t->stop_ms) {
			kill_pid(t->pid, SIGSTOP, 1);
			t->stopped = true;
			t->phase_start = now;
		}
	}
	if (any)
		schedule_delayed_work(&ckpt_thr_work, msecs_to_jiffies(CKPT_THROTTLE_TICK_MS));
	mutex_unlock(&ckpt_thr_lock);
}

/* Adds or updates @pid's throttle; 0, -ESRCH (no such process) or -ENOSPC (table full). */
int ckpt_throttle_set(int pid, unsigned int stop_ms, unsigned int period_ms, u64 *stopped)
{
	struct pid *p = find_get_pid(pid);
	struct ckpt_throttle *t = NULL;
	u64 now = ktime_get_ns();
	int i;

	if (!p)
		return -ESRCH;
	mutex_lock(&ckpt_thr_lock);
	for (i = 0; i < CKPT_THROTTLE_MAX; i++)
		if (ckpt_thr[i].pid == p)
			t = &ckpt_thr[i];
	if (t) {
		put_pid(p);	/* the slot holds its own reference */
	} else {
		for (i = 0; i < CKPT_THROTTLE_MAX && !t; i++)
			if (!ckpt_thr[i].pid)
				t = &ckpt_thr[i];
		if (!t) {
			mutex_unlock(&ckpt_thr_lock);
			put_pid(p);
			return -ENOSPC;
		}
		*t = (struct ckpt_throttle){ .pid = p, .phase_start = now };
	}
	t->stop_ms = stop_ms;
	t->period_ms = period_ms;
	*stopped = ckpt_thr_total(t, now);
	mutex_unlock(&ckpt_thr_lock);
	schedule_delayed_work(&ckpt_thr_work, 0);
	return 0;
}

static void ckpt_thr_free(struct ckpt_throttle *t, u64 now, u64 *stopped)
{
	ckpt_thr_run(t, now);
	if (stopped)
		*stopped = t->stopped_ns;
	put_pid(t->pid);
	t->pid = NULL;
}

/* Lets @pid run freely again; -ESRCH if it is not throttled. */
int ckpt_throttle_release(int pid, u64 *stopped)
{
	struct pid *p = find_get_pid(pid);
	int i, rc = -ESRCH;

	mutex_lock(&ckpt_thr_lock);
	for (i = 0; i < CKPT_THROTTLE_MAX; i++)
		if (p && ckpt_thr[i].pid == p) {
			ckpt_thr_free(&ckpt_thr[i], ktime_get_ns(), stopped);
			rc = 0;
		}
	mutex_unlock(&ckpt_thr_lock);
	put_pid(p);
	return rc;
}

/* Ends every throttle (session end, module exit). Process context. */
void ckpt_throttle_release_all(void)
{
	int i;

	mutex_lock(&ckpt_thr_lock);
	for (i = 0; i < CKPT_THROTTLE_MAX; i++)
		if (ckpt_thr[i].pid)
			ckpt_thr_free(&ckpt_thr[i], ktime_get_ns(), NULL);
	mutex_unlock(&ckpt_thr_lock);
	/* The tick finds no slot and does not rearm; wait for a running one. */
	cancel_delayed_work_sync(&ckpt_thr_work);
}

/*
 * Output hold (docs/checkpoint-abi.md "Output hold"): from just before a migration's
 * capture until the move commits or is abandoned, the guest sends no IP packet except on
 * the migration connection (external consistency: nothing the destination copy will not
 * also have sent). Netfilter hooks at LOCAL_OUT; here in C because the 6.12 Rust crate has
 * no netfilter abstraction. ckpt_main.rs decides when to arm and release.
 */
static struct {
	__be32 saddr, daddr;
	__be16 sport, dport;
} ckpt_hold_tuple;
static int ckpt_hold_on;	/* read by the hooks in softirq context */
static bool ckpt_hold_registered;
static atomic64_t ckpt_hold_drops;

static unsigned int ckpt_hold_ipv4(void *priv, struct sk_buff *skb,
				   const struct nf_hook_state *state)
{
	const struct iphdr *iph = ip_hdr(skb);
	const struct tcphdr *th;
	struct tcphdr _th;

	if (!smp_load_acquire(&ckpt_hold_on))
		return NF_ACCEPT;
	if (iph->protocol == IPPROTO_TCP && iph->saddr == ckpt_hold_tuple.saddr &&
	    iph->daddr == ckpt_hold_tuple.daddr && !(iph->frag_off & htons(IP_OFFSET))) {
		th = skb_header_pointer(skb, skb_network_offset(skb) + ip_hdrlen(skb),
					sizeof(_th), &_th);
		if (th && th->source == ckpt_hold_tuple.sport && th->dest == ckpt_hold_tuple.dport)
			return NF_ACCEPT;
	}
	atomic64_inc(&ckpt_hold_drops);
	return NF_DROP;
}

static unsigned int ckpt_hold_other(void *priv, struct sk_buff *skb,
				    const struct nf_hook_state *state)
{
	if (!smp_load_acquire(&ckpt_hold_on))
		return NF_ACCEPT;
	atomic64_inc(&ckpt_hold_drops);
	return NF_DROP;
}

static const struct nf_hook_ops ckpt_hold_ops[] = {
	{ .hook = ckpt_hold_ipv4, .pf = NFPROTO_IPV4, .hooknum = NF_INET_LOCAL_OUT,
	  .priority = INT_MIN },
#if IS_ENABLED(CONFIG_IPV6)
	{ .hook = ckpt_hold_other, .pf = NFPROTO_IPV6, .hooknum = NF_INET_LOCAL_OUT,
	  .priority = INT_MIN },
#endif
};

/* Process context only (registering sleeps). Addresses and ports in network order. */
int ckpt_hold_arm(__be32 saddr, __be32 daddr, __be16 sport, __be16 dport)
{
	int err;

	if (!ckpt_hold_registered) {
		err = nf_register_net_hooks(&init_net, ckpt_hold_ops, ARRAY_SIZE(ckpt_hold_ops));
		if (err)
			return err;
		ckpt_hold_registered = true;
	}
	WRITE_ONCE(ckpt_hold_on, 0);
	ckpt_hold_tuple.saddr = saddr;
	ckpt_hold_tuple.daddr = daddr;
	ckpt_hold_tuple.sport = sport;
	ckpt_hold_tuple.dport = dport;
	atomic64_set(&ckpt_hold_drops, 0);
	smp_store_release(&ckpt_hold_on, 1);
	return 0;
}

/* Any context: the hooks let everything through from now on. */
void ckpt_hold_disarm(void)
{
	WRITE_ONCE(ckpt_hold_on, 0);
}

/* Process context: disarm and unregister; returns the packets dropped while armed. */
unsigned long long ckpt_hold_release(void)
{
	ckpt_hold_disarm();
	if (ckpt_hold_registered) {
		nf_unregister_net_hooks(&init_net, ckpt_hold_ops, ARRAY_SIZE(ckpt_hold_ops));
		ckpt_hold_registered = false;
	}
	return atomic64_xchg(&ckpt_hold_drops, 0);
}
