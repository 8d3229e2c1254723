// SPDX-License-Identifier: GPL-2.0
/*
 * C glue of the fault tracker (ckpt_track.rs): one-line wrappers for what Rust cannot
 * reach (static inlines, macros, the kernel's hook variables) and the two entry points the
 * kernel calls through them. No policy here: every decision is made in ckpt_track.rs.
 */
#include <linux/module.h>
#include <linux/mm.h>
#include <linux/percpu.h>
#include <linux/stop_machine.h>
#include <linux/rcupdate.h>
#include <linux/irqflags.h>
#include <asm/pgtable.h>
#include <asm/tlbflush.h>
#include <asm/xen/page.h>
#include <asm/xen/hypercall.h>
#include <xen/xen-ops.h>
#include <xen/interface/xen.h>
#include <xen/interface/grant_table.h>
#include <linux/slab.h>
#include <linux/bitmap.h>
#include <linux/syscore_ops.h>
#include <xen/events.h>

/* Implemented in Rust (ckpt_track.rs). */
bool ckpt_track_fault(unsigned long error_code, unsigned long address);
unsigned long ckpt_track_pte(unsigned long val);
void ckpt_track_grant_end(unsigned long gfn);
void ckpt_track_pre_capture(void);

/* Called from Rust. */
void ckpt_track_hooks(int on);
void ckpt_track_sync(void);
int ckpt_track_stop_machine(int (*fn)(void *), void *arg);
unsigned long *ckpt_track_kernel_pte(unsigned long address);
int ckpt_track_pte_cmpxchg(unsigned long *ptep, unsigned long old, unsigned long new);
int ckpt_track_mmu_update(const unsigned long *reqs, unsigned int count);
void ckpt_track_flush_all(void);
void ckpt_track_percpu(unsigned int cpu, unsigned long *start, unsigned long *size);
unsigned int ckpt_track_nr_cpus(void);
int ckpt_track_for_each_grant(void (*fn)(unsigned long gfn, void *arg), void *arg);
unsigned long ckpt_track_page_offset(void);
unsigned long ckpt_track_vmemmap(void);
unsigned long ckpt_track_irq_save(void);
unsigned long ckpt_track_m2p(unsigned long mfn);
void ckpt_track_irq_restore(unsigned long flags);
unsigned long ckpt_track_classify(unsigned long *free_words, unsigned long *small_words,
				  unsigned long max_pfn, unsigned long max_obj);
unsigned long ckpt_track_kmalloc_class(unsigned long bytes);
void ckpt_track_kmalloc_probe(unsigned long frames);
unsigned long ckpt_track_slab_size(unsigned long pfn);
unsigned long ckpt_track_grant_frames(void);
unsigned long ckpt_buddy_run(struct page *page, unsigned long pfn);
void ckpt_track_syscore(int on);
int ckpt_track_evtchn_fifo(void);

/* Per CPU "in the fault hook": a fault taken inside the hook is left to Linux (which
 * reports it) instead of recursing. Module .bss, which the tracker never protects. */
static int ckpt_in_hook[NR_CPUS];

static bool ckpt_fault_entry(struct pt_regs *regs, unsigned long error_code,
			     unsigned long address)
{
	int cpu = raw_smp_processor_id();
	bool handled;

	if (READ_ONCE(ckpt_in_hook[cpu]))
		return false;
	WRITE_ONCE(ckpt_in_hook[cpu], 1);
	handled = ckpt_track_fault(error_code, address);
	WRITE_ONCE(ckpt_in_hook[cpu], 0);
	return handled;
}

static pteval_t ckpt_pte_entry(pteval_t val)
{
	return ckpt_track_pte(val);
}

/* Installs (on != 0) or removes the kernel hooks. Removal is complete after ckpt_track_sync(). */
void ckpt_track_hooks(int on)
{
	WRITE_ONCE(xen_checkpoint_pte_hook, on ? ckpt_pte_entry : NULL);
	WRITE_ONCE(xen_checkpoint_grant_end_hook, on ? ckpt_track_grant_end : NULL);
	WRITE_ONCE(xen_checkpoint_fault_hook, on ? ckpt_fault_entry : NULL);
}

/* Every caller of a hook runs with interrupts or preemption off: an RCU grace period
 * waits for all that saw the old pointer. */
void ckpt_track_sync(void) { synchronize_rcu(); }

int ckpt_track_stop_machine(int (*fn)(void *), void *arg)
{
	return stop_machine(fn, arg, NULL);
}

/* The L1 entry mapping a kernel address in the current page tables (whose kernel half
 * every pgd shares), or NULL. Called with interrupts off, so no table is freed under us. */
unsigned long *ckpt_track_kernel_pte(unsigned long address)
{
	pgd_t *pgd = pgd_offset_pgd((pgd_t *)__va(read_cr3_pa()), address);
	p4d_t *p4d;
	pud_t *pud;
	pmd_t *pmd;

	if (!pgd_present(*pgd))
		return NULL;
	p4d = p4d_offset(pgd, address);
	if (!p4d_present(*p4d))
		return NULL;
	pud = pud_offset(p4d, address);
	if (!pud_present(*pud) || pud_leaf(*pud))
		return NULL;
	pmd = pmd_offset(pud, address);
	if (!pmd_present(*pmd) || pmd_leaf(*pmd))
		return NULL;
	return (unsigned long *)pte_offset_kernel(pmd, address);
}

/* Xen emulates a cmpxchg on a read-only page-table page (writable page tables assist)
 * atomically with every other update of that table. Returns 1 if the entry was old. */
int ckpt_track_pte_cmpxchg(unsigned long *ptep, unsigned long old, unsigned long new)
{
	return try_cmpxchg64((u64 *)ptep, (u64 *)&old, new);
}

/* reqs: count pairs (machine address of the entry | MMU_NORMAL_PT_UPDATE, new value). */
/* Returns how many requests Xen refused. Xen stops a batch at the first refused request
 * (a disarm can meet an entry whose page has become a page table since it was protected:
 * Xen refuses to make it writable), so the rest of the batch is sent again without it. */
int ckpt_track_mmu_update(const unsigned long *reqs, unsigned int count)
{
	unsigned int done, refused = 0;

	while (count) {
		done = 0;
		if (HYPERVISOR_mmu_update((struct mmu_update *)reqs, count, &done, DOMID_SELF) >= 0)
			break;
		refused++;
		done = min(done + 1, count);
		reqs += 2 * done;
		count -= done;
	}
	return refused;
}

void ckpt_track_flush_all(void)
{
	struct mmuext_op op = { .cmd = MMUEXT_TLB_FLUSH_ALL };

	HYPERVISOR_mmuext_op(&op, 1, NULL, DOMID_SELF);
}

void ckpt_track_percpu(unsigned int cpu, unsigned long *start, unsigned long *size)
{
	xen_checkpoint_percpu_area(cpu, start, size);
}

unsigned int ckpt_track_nr_cpus(void) { return nr_cpu_ids; }

int ckpt_track_for_each_grant(void (*fn)(unsigned long gfn, void *arg), void *arg)
{
	return xen_checkpoint_for_each_grant(fn, arg);
}

/* Xen's M2P entry for mfn (~0 if unreadable). No pagefault_disable(): that writes the
 * task struct, which may be write-protected; an unmapped entry is fixed up by the
 * exception table like Linux's own mfn_to_pfn(). */
unsigned long ckpt_track_m2p(unsigned long mfn)
{
	unsigned long pfn;

	if (mfn >= machine_to_phys_nr || xen_safe_read_ulong(&machine_to_phys_mapping[mfn], &pfn) < 0)
		return ~0UL;
	return pfn;
}

unsigned long ckpt_track_page_offset(void) { return PAGE_OFFSET; }
unsigned long ckpt_track_vmemmap(void) { return (unsigned long)vmemmap; }

unsigned long ckpt_track_irq_save(void)
{
	unsigned long flags;

	local_irq_save(flags);
	return flags;
}

void ckpt_track_irq_restore(unsigned long flags) { local_irq_restore(flags); }

/* In stop_machine (exact: no CPU holds a zone or slab lock): sets in @free_words (if not
 * NULL) the bit of every pfn below @max_pfn in a free buddy block (returns how many) and in
 * @small_words the bit of every page of a slab whose objects are at most @max_obj bytes.
 * It runs in the capture pause, so it steps over whole free blocks and folios and asks
 * pfn_valid() once per subsection (its granularity), not once per pfn. */
unsigned long ckpt_track_classify(unsigned long *free_words, unsigned long *small_words,
				  unsigned long max_pfn, unsigned long max_obj)
{
	unsigned long pfn = 0, n = 0, valid_end = 0, end, run;
	struct folio *folio;
	struct page *page;

	while (pfn < max_pfn) {
		if (pfn >= valid_end) {
			valid_end = ALIGN(pfn + 1, PAGES_PER_SUBSECTION);
			if (!pfn_valid(pfn)) {
				pfn = valid_end;
				continue;
			}
		}
		page = pfn_to_page(pfn);
		run = ckpt_buddy_run(page, pfn);
		if (run) {
			end = min(pfn + run, max_pfn);
			n += end - pfn;
			if (free_words)
				bitmap_set(free_words, pfn, end - pfn);
			pfn = end;
			continue;
		}
		folio = page_folio(page);
		end = min(folio_pfn(folio) + folio_nr_pages(folio), max_pfn);
		if (end <= pfn)
			end = pfn + 1;
		if (folio_test_slab(folio) && ksize(folio_address(folio)) <= max_obj)
			bitmap_set(small_words, pfn, end - pfn);
		pfn = end;
	}
	return n;
}

/* After the capture, Linux's resume path kmallocs the grant table's frame list (one
 * unsigned long per frame) and Xen writes into it. An allocation and a free of each size
 * it may ask for leaves each of those caches with a partial slab holding a free object, so
 * that allocation takes an object from an existing slab page (which the capture leaves
 * writable) and never needs a new one. */
void ckpt_track_kmalloc_probe(unsigned long frames)
{
	unsigned long n;

	for (n = 1; n <= frames; n++)
		kfree(kmalloc(n * sizeof(unsigned long), GFP_ATOMIC | __GFP_NOWARN));
}

unsigned long ckpt_track_kmalloc_class(unsigned long bytes) { return kmalloc_size_roundup(bytes); }

/* Xen's grant-table size for this domain in frames (0 if it cannot tell); @q lives on the
 * (vmalloc'd, never protected) stack because Xen writes the answer into it. */
unsigned long ckpt_track_grant_frames(void)
{
	struct gnttab_query_size q = { .dom = DOMID_SELF };

	if (HYPERVISOR_grant_table_op(GNTTABOP_query_size, &q, 1) || q.status != GNTST_okay)
		return 0;
	return q.nr_frames;
}

/* Linux's Xen suspend sequence calls the syscore suspend callbacks in stop_machine, right
 * before it unmaps the grant table: the last moment the tracker can see the grants as they
 * are at the capture point. */
static int ckpt_syscore_suspend(void *data)
{
	ckpt_track_pre_capture();
	return 0;
}

static const struct syscore_ops ckpt_syscore_ops = { .suspend = ckpt_syscore_suspend };
static struct syscore ckpt_syscore = { .ops = &ckpt_syscore_ops };

void ckpt_track_syscore(int on)
{
	if (on)
		register_syscore(&ckpt_syscore);
	else
		unregister_syscore(&ckpt_syscore);
}

/* Diagnostics: the object size of the slab @pfn belongs to (0: no slab page). */
unsigned long ckpt_track_slab_size(unsigned long pfn)
{
	struct folio *folio;

	if (!pfn_valid(pfn))
		return 0;
	folio = page_folio(pfn_to_page(pfn));
	return folio_test_slab(folio) ? ksize(folio_address(folio)) : 0;
}

/* Whether Linux uses FIFO event channels: Xen then writes the event array and the control
 * blocks (guest pages Xen maps itself) at any time, without a guest fault, and nothing
 * exported says which pages they are. The 2-level ABI has exactly 64 * 64 channels (its
 * state lives in shared_info, which is no RAM page); FIFO has 1024 per event-array page,
 * and a guest would need more than 3072 bound channels to reach 4 pages. */
int ckpt_track_evtchn_fifo(void) { return xen_evtchn_nr_channels() != 64 * 64; }
