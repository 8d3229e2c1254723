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

/* Implemented in Rust (ckpt_main.rs). */
long ckpt_rs_ioctl(unsigned long file, unsigned int cmd, unsigned long arg);
long ckpt_rs_read(unsigned long file, char __user *buf, size_t len, loff_t *pos);
void ckpt_rs_release(unsigned long file);

/* Called from Rust (declared here to keep -Wmissing-prototypes quiet). */
int ckpt_shim_register(void);
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
unsigned long ckpt_read_cr0(void);
int ckpt_unpin_table(unsigned long mfn);
int ckpt_hold_arm(__be32 saddr, __be32 daddr, __be16 sport, __be16 dport);
void ckpt_hold_disarm(void);
unsigned long long ckpt_hold_release(void);
unsigned long ckpt_read_cr4(void);

static DEFINE_MUTEX(ckpt_lock);

static int ckpt_open(struct inode *inode, struct file *file)
{
	return capable(CAP_SYS_ADMIN) ? 0 : -EPERM;
}

static int ckpt_release(struct inode *inode, struct file *file)
{
	mutex_lock(&ckpt_lock);
	ckpt_rs_release((unsigned long)file);
	mutex_unlock(&ckpt_lock);
	return 0;
}

static long ckpt_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	long ret;

	if (mutex_lock_interruptible(&ckpt_lock))
		return -EINTR;
	ret = ckpt_rs_ioctl((unsigned long)file, cmd, arg);
	mutex_unlock(&ckpt_lock);
	return ret;
}

static ssize_t ckpt_read(struct file *file, char __user *buf, size_t len, loff_t *pos)
{
	long ret;

	if (mutex_lock_interruptible(&ckpt_lock))
		return -EINTR;
	ret = ckpt_rs_read((unsigned long)file, buf, len, pos);
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

int ckpt_shim_register(void) { return misc_register(&ckpt_dev); }
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
