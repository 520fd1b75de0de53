// SPDX-License-Identifier: GPL-2.0
/*
 * idlemap_kmod: the kernel half of the 2018 /proc/PID/idle_bitmap RFC as a
 * loadable module.  /dev/idlemap; a file descriptor is bound to one process
 * (its struct pid) and reads/marks that process's pages by virtual address
 * with the process's own page tables: no rmap walk, no frame numbers.
 *
 * Written against Linux 6.1 and 6.12 (x86-64).  What they do not export to
 * modules, and what is used instead (docs/kmod.md has the argument):
 *  - walk_page_range: a plain pgd/p4d/pud/pmd/pte walk, under the locks
 *    mm/pagewalk.c's users take (mmap_lock read, pmd_lock for a huge PMD,
 *    the PTE table lock for PTEs);
 *  - __pmd_trans_huge_lock, pmd_clear_bad: their checks done here, without
 *    ever clearing a "bad" entry;
 *  - __pte_offset_map_lock (6.5+): the same RCU-map, lock, recheck steps
 *    (map_lock_ptes);
 *  - huge_pte_offset, hugetlb_vma_lock_read: the same walk, under the
 *    file's i_mmap_rwsem instead (hugetlb_entry);
 *  - ptep/pmdp_test_and_clear_young (out of line on x86):
 *    test_and_clear_bit(_PAGE_BIT_ACCESSED), which is what they do;
 *  - flush_tlb_mm_range: an IPI running __flush_tlb_all (GPL export) on
 *    every CPU that may cache the target's translations (flush_mm()).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/bitmap.h>
#include <linux/capability.h>
#include <linux/fs.h>
#include <linux/hugetlb.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/mmap_lock.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>
#include <linux/pgtable.h>
#include <linux/pid.h>
#include <linux/random.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/siphash.h>
#include <linux/slab.h>
#include <linux/smp.h>
#include <linux/uaccess.h>
#include <asm/tlbflush.h>

#include "idlemap.h"

#ifndef CONFIG_X86_64
#error "idlemap_kmod: only x86-64 is written and tested (the accessed bit and TLB flush are arch code)"
#endif

/*
 * One chunk: 4 KiB of each bitmap = 32768 pages = 128 MiB of address space
 * per mmap_lock hold.  Between chunks the lock is dropped, results are
 * copied out, and we reschedule and check for a fatal signal.
 */
#define CHUNK_BYTES		4096UL
#define CHUNK_PAGES		(CHUNK_BYTES * BITS_PER_BYTE)
/*
 * Work bound per call: 2 Mi pages walked (8 GiB of address space, 256 KiB
 * of bitmap), and as much empty address space as is zeroed in the caller's
 * bitmaps.  Empty address space with no bitmap to zero costs one check per
 * empty entry (empty_end): at most MAX_SKIP_STEPS of those per call.
 */
#define MAX_PAGES_PER_CALL	(64UL * CHUNK_PAGES)
#define MAX_SKIP_STEPS		(1UL << 14)
/* Bitmaps cover user space rounded up to whole u64 words. */
#define VA_LIMIT		round_up(TASK_SIZE_MAX, 64 * PAGE_SIZE)

enum { BM_IDLE, BM_PRESENT, BM_HUGE, BM_SWAPPED, BM_N };

struct idlemap_file {
	struct mutex lock;		/* serialises every operation on this fd */
	struct pid *pid;		/* bound target; a counted reference */
	u32 mode;			/* IDLEMAP_MODE_* for pread */
	unsigned long *buf[BM_N];	/* CHUNK_BYTES each: one chunk of output */
	unsigned long *sel;		/* CHUNK_BYTES: one chunk of a pwrite */
	/*
	 * A call cut short by MAX_PAGES_PER_CALL: where it stopped (0: it was
	 * not) and the huge entry it ended in, so that a call continuing from
	 * there tests a huge page the cut falls in once, as a chunk does.
	 */
	unsigned long cont_addr, huge_lo, huge_hi;
	bool huge_young, huge_marked;
	/*
	 * IDLEMAP_WALK_NOFLUSH: the mm whose accessed bits were cleared and
	 * whose TLB flush is still owed (mmgrab'd; NULL: none owed).
	 */
	struct mm_struct *flush_owed;
};

struct walk {
	unsigned long base;		/* VA of bit 0 of the chunk buffers */
	unsigned long *bm[BM_N];	/* NULL: not wanted */
	const unsigned long *sel;	/* pwrite: clear only pages whose bit is set */
	bool clear;			/* test-and-clear accessed bits */
	u64 nr_present, nr_idle;
	/*
	 * The last huge entry counted (THP or hugetlb), so that one a chunk
	 * boundary cuts is tested once per walk: its VA range, whether it
	 * read young, whether it was marked.
	 */
	unsigned long huge_lo, huge_hi;
	bool huge_young, huge_marked;
};

static inline unsigned long bit_index(const struct walk *w, unsigned long addr)
{
	return (addr - w->base) >> PAGE_SHIFT;
}

static void set_bits(struct walk *w, int k, unsigned long i, unsigned long n)
{
	if (w->bm[k])
		bitmap_set(w->bm[k], i, n);
}

/*
 * One huge entry -- a THP's PMD, a hugetlb PMD (2 MiB) or PUD (1 GiB) --
 * mapping [hlo, hhi), seen over [addr, end) of it: one accessed bit, so
 * counted whole (every page's bit the same) and marked whole (marking any
 * of its pages marks it).  entry: the locked entry; young: its snapshot.
 */
static void count_huge(struct walk *w, unsigned long *entry, bool young,
		       unsigned long hlo, unsigned long hhi,
		       unsigned long addr, unsigned long end)
{
	unsigned long i = bit_index(w, addr), n = (end - addr) >> PAGE_SHIFT;
	bool mark = w->clear && (!w->sel || find_next_bit(w->sel, i + n, i) < i + n);

	if (hlo < addr && hlo == w->huge_lo && hhi == w->huge_hi) {
		/* cut by a chunk boundary: read as the chunk before read it */
		young = w->huge_young;
		if (mark && !w->huge_marked)
			test_and_clear_bit(_PAGE_BIT_ACCESSED, entry);
		mark |= w->huge_marked;
	} else if (mark && young) {
		/* ptep/pmdp_test_and_clear_young() on x86, which are not exported */
		young = test_and_clear_bit(_PAGE_BIT_ACCESSED, entry);
	}
	w->huge_lo = hlo;
	w->huge_hi = hhi;
	w->huge_young = young;
	w->huge_marked = mark;
	w->nr_present += n;
	set_bits(w, BM_PRESENT, i, n);
	set_bits(w, BM_HUGE, i, n);
	if (!young) {
		w->nr_idle += n;
		set_bits(w, BM_IDLE, i, n);
	}
}

/*
 * Map and lock the PTE table under *pmd; NULL if *pmd is no longer a PTE
 * table (the caller decides again).  From 6.5 a PTE table can be detached
 * and freed under mmap_lock held for read (khugepaged's retract_page_tables
 * and collapse_pte_mapped_thp; the table is freed after an RCU grace
 * period, pte_free_defer), and pte_offset_map_lock() is out of line
 * (__pte_offset_map_lock) and not exported.  So, as it does: read the PMD
 * under rcu_read_lock, take that table's lock, and check the PMD still
 * points at it; the table then stays until the lock is dropped.  On 6.1 the
 * table cannot go away under mmap_lock and the same steps are merely
 * redundant: one path for every kernel.  Unmapped by unmap_ptes().
 */
static pte_t *map_lock_ptes(struct mm_struct *mm, pmd_t *pmd, unsigned long addr,
			    spinlock_t **ptlp)
{
	spinlock_t *ptl;
	pmd_t val;

	rcu_read_lock();
	val = READ_ONCE(*pmd);
	if (pmd_none(val) || !pmd_present(val) || pmd_trans_huge(val) ||
	    pmd_devmap(val) || pmd_bad(val))
		goto changed;
	ptl = pte_lockptr(mm, &val);
	spin_lock(ptl);
	if (pmd_same(val, READ_ONCE(*pmd))) {
		*ptlp = ptl;
		return (pte_t *)pmd_page_vaddr(val) + pte_index(addr);
	}
	spin_unlock(ptl);
changed:
	rcu_read_unlock();
	return NULL;
}

static void unmap_ptes(spinlock_t *ptl)
{
	spin_unlock(ptl);
	rcu_read_unlock();
}

/* false: *pmd stopped being a PTE table before it was locked (decide again) */
static bool walk_ptes(struct walk *w, struct mm_struct *mm, pmd_t *pmd,
		      unsigned long addr, unsigned long end)
{
	spinlock_t *ptl;
	pte_t *pte;

	/* The PTE table lock, as mm/pagewalk.c users (clear_refs, pagemap) take it. */
	pte = map_lock_ptes(mm, pmd, addr, &ptl);
	if (!pte)
		return false;
	for (; addr != end; pte++, addr += PAGE_SIZE) {
		pte_t ptent = ptep_get(pte);
		unsigned long i = bit_index(w, addr);
		bool young;

		if (pte_none(ptent))
			continue;
		if (!pte_present(ptent)) {
			/* swap, migration or marker entry: pagemap calls these "swapped" */
			if (w->bm[BM_SWAPPED])
				__set_bit(i, w->bm[BM_SWAPPED]);
			continue;
		}
		young = pte_young(ptent);
		if (w->clear && young && (!w->sel || test_bit(i, w->sel)))
			/* ptep_test_and_clear_young() on x86, which is not exported */
			young = test_and_clear_bit(_PAGE_BIT_ACCESSED, (unsigned long *)&pte->pte);
		w->nr_present++;
		if (w->bm[BM_PRESENT])
			__set_bit(i, w->bm[BM_PRESENT]);
		if (!young) {
			w->nr_idle++;
			if (w->bm[BM_IDLE])
				__set_bit(i, w->bm[BM_IDLE]);
		}
	}
	unmap_ptes(ptl);
	return true;
}

static void walk_pmds(struct walk *w, struct mm_struct *mm, pud_t *pud,
		      unsigned long addr, unsigned long end)
{
	pmd_t *pmd = pmd_offset(pud, addr);
	unsigned long next;

	do {
		pmd_t val;

		next = pmd_addr_end(addr, end);
again:
		/*
		 * Under mmap_lock (read) an empty PMD can become a huge one (a
		 * THP fault), a huge one can be split or zapped, and from 6.5 a
		 * PTE table can be retracted (map_lock_ptes): decide on one
		 * snapshot, and re-check under the entry's lock -- a huge PMD as
		 * __pmd_trans_huge_lock does, a table as pte_offset_map_lock does.
		 */
		val = READ_ONCE(*pmd);
		if (pmd_none(val))
			continue;
		if (pmd_trans_huge(val) || pmd_devmap(val)) {
			spinlock_t *ptl = pmd_lock(mm, pmd);

			val = *pmd;
			if (pmd_trans_huge(val)) {
				unsigned long hlo = addr & PMD_MASK;

				count_huge(w, (unsigned long *)pmd, pmd_young(val),
					   hlo, hlo + PMD_SIZE, addr, next);
				spin_unlock(ptl);
				continue;
			}
			spin_unlock(ptl);
			if (pmd_devmap(val))	/* device memory (DAX): no struct page ageing */
				continue;
			goto again;	/* split meanwhile: now a PTE table, or none */
		}
		if (!pmd_present(val)) {
			/* a THP under migration (pagemap: swapped), counted whole */
			set_bits(w, BM_SWAPPED, bit_index(w, addr), (next - addr) >> PAGE_SHIFT);
			continue;
		}
		if (pmd_bad(val))	/* never "fixed" here (pmd_clear_bad is not ours to call) */
			continue;
		if (!walk_ptes(w, mm, pmd, addr, next))
			goto again;	/* retracted or collapsed meanwhile (6.5+) */
	} while (pmd++, addr = next, addr != end);
}

static void walk_puds(struct walk *w, struct mm_struct *mm, p4d_t *p4d,
		      unsigned long addr, unsigned long end)
{
	pud_t *pud = pud_offset(p4d, addr);
	unsigned long next;

	do {
		pud_t val = READ_ONCE(*pud);

		next = pud_addr_end(addr, end);
		/* 1 GiB leaves (hugetlb, DAX) are pud_bad() here: not walked */
		if (pud_none(val) || pud_bad(val))
			continue;
		walk_pmds(w, mm, pud, addr, next);
	} while (pud++, addr = next, addr != end);
}

static void walk_pgds(struct walk *w, struct mm_struct *mm,
		      unsigned long addr, unsigned long end)
{
	pgd_t *pgd = pgd_offset(mm, addr);
	unsigned long next;

	do {
		p4d_t *p4d;
		unsigned long p4next, a = addr;

		next = pgd_addr_end(addr, end);
		if (pgd_none(*pgd) || pgd_bad(*pgd))
			continue;
		p4d = p4d_offset(pgd, a);
		do {
			p4next = p4d_addr_end(a, next);
			if (p4d_none(*p4d) || p4d_bad(*p4d))
				continue;
			walk_puds(w, mm, p4d, a, p4next);
		} while (p4d++, a = p4next, a != next);
	} while (pgd++, addr = next, addr != end);
}

/*
 * The entry of the hugetlb page at addr (sz: PMD_SIZE or PUD_SIZE), or NULL
 * if there is no table for it: what huge_pte_offset() does, which is not
 * exported.  Its rule for the caller (include/linux/hugetlb.h, 6.1 and
 * 6.12): private mappings share no page tables, so mmap_lock keeps them; a
 * shared mapping's PMD table may be shared between processes and unshared
 * (huge_pmd_unshare) only under the file's i_mmap_rwsem held for write, so
 * walk_vmas() holds it for read.  The entry may still change (fault,
 * migration, unmap): read it under huge_pte_lock().
 */
static pte_t *hugetlb_entry(struct mm_struct *mm, unsigned long addr, unsigned long sz)
{
	pgd_t *pgd = pgd_offset(mm, addr);
	p4d_t *p4d;
	pud_t *pud;

	if (!pgd_present(READ_ONCE(*pgd)))
		return NULL;
	p4d = p4d_offset(pgd, addr);
	if (!p4d_present(READ_ONCE(*p4d)))
		return NULL;
	pud = pud_offset(p4d, addr);
	if (sz == PUD_SIZE)
		return (pte_t *)pud;
	if (!pud_present(READ_ONCE(*pud)))
		return NULL;
	return (pte_t *)pmd_offset(pud, addr);
}

/*
 * A hugetlb VMA: one entry per huge page, a PMD or PUD with the PTE's bit
 * layout, counted whole like a THP.  Not present but not empty (migration,
 * hwpoison, a userfaultfd marker): "swapped", as pagemap reports it.
 */
static void walk_hugetlb(struct walk *w, struct vm_area_struct *vma,
			 unsigned long addr, unsigned long end)
{
	struct mm_struct *mm = vma->vm_mm;
	struct hstate *h = hstate_vma(vma);
	unsigned long sz = huge_page_size(h), next;

	if (sz != PMD_SIZE && sz != PUD_SIZE)	/* x86-64 has no other */
		return;
	for (; addr < end; addr = next) {
		unsigned long hlo = addr & huge_page_mask(h);
		pte_t *ptep = hugetlb_entry(mm, hlo, sz);
		spinlock_t *ptl;
		pte_t e;

		next = min(end, hlo + sz);
		if (!ptep)
			continue;
		ptl = huge_pte_lock(h, mm, ptep);
		e = ptep_get(ptep);
		if (pte_present(e))
			count_huge(w, (unsigned long *)ptep, pte_young(e), hlo, hlo + sz, addr, next);
		else if (!pte_none(e))
			set_bits(w, BM_SWAPPED, bit_index(w, addr), (next - addr) >> PAGE_SHIFT);
		spin_unlock(ptl);
	}
}

/* [start, end) under mmap_lock (read): only inside VMAs, never across one. */
static void walk_vmas(struct walk *w, struct mm_struct *mm,
		      unsigned long start, unsigned long end)
{
	struct vm_area_struct *vma;

	for (vma = find_vma(mm, start); vma && vma->vm_start < end;
	     vma = find_vma(mm, vma->vm_end)) {
		unsigned long lo = max(start, vma->vm_start);
		unsigned long hi = min(end, vma->vm_end);

		/* No struct pages / device memory */
		if (vma->vm_flags & (VM_PFNMAP | VM_IO))
			continue;
		if (is_vm_hugetlb_page(vma)) {
			struct address_space *mapping;

			if (!vma->vm_file)
				continue;
			/* mmap_lock, then i_mmap_rwsem, then the entry's lock: mm/rmap.c's order */
			mapping = vma->vm_file->f_mapping;
			i_mmap_lock_read(mapping);
			walk_hugetlb(w, vma, lo, hi);
			i_mmap_unlock_read(mapping);
			continue;
		}
		walk_pgds(w, mm, lo, hi);
	}
}

/*
 * Flush every TLB entry of mm on every CPU that may hold one.  6.1 exports
 * neither flush_tlb_mm_range() nor (asm/tlbflush.h, #ifndef MODULE) the
 * generation counter inc_mm_tlb_gen() that lets it skip CPUs.  Which CPUs
 * may hold mm's translations:
 *  - with PCID, any CPU that ran mm recently: up to TLB_NR_DYN_ASIDS (6)
 *    address spaces stay tagged in each CPU's TLB after it switches away,
 *    and only the per-CPU cpu_tlbstate (not exported) says which;
 *  - without PCID, a CR3 switch drops them, so only CPUs with mm loaded
 *    now: mm_cpumask(mm) (x86 clears the bit on switching away, and keeps
 *    it for a CPU in lazy TLB mode, which is then flushed too).
 * So: every online CPU with PCID, mm_cpumask otherwise; each runs
 * __flush_tlb_all() (GPL export: INVPCID all-contexts or a CR4.PGE
 * toggle, which drop every PCID's entries, global ones included).  The
 * IPIs are waited for; smp_call_function_many's IPI is a full barrier
 * after our page-table writes.  Cost: once per marking call, an IPI per
 * CPU and a refill of its TLB.
 */
static void flush_ipi(void *info)
{
	__flush_tlb_all();
}

/*
 * TLB flushes paid so far (flush_mm calls, every fd, every target): read-only
 * at /sys/module/idlemap_kmod/parameters/tlb_flushes.  Lets a test count the
 * flushes of a read -- "one per read" is a claim about how many IPIs a
 * target's CPU takes -- next to what the kernel itself counts (the CAL row
 * of /proc/interrupts).
 */
static atomic64_t nr_flushes = ATOMIC64_INIT(0);

static int flushes_get(char *buf, const struct kernel_param *kp)
{
	return scnprintf(buf, PAGE_SIZE, "%lld\n", (long long)atomic64_read(&nr_flushes));
}

static int flushes_set(const char *val, const struct kernel_param *kp)
{
	return -EPERM;		/* a counter, not a setting (insmod tlb_flushes=N) */
}

static const struct kernel_param_ops flushes_ops = {
	.get = flushes_get,
	.set = flushes_set,
};
module_param_cb(tlb_flushes, &flushes_ops, NULL, 0444);
MODULE_PARM_DESC(tlb_flushes, "TLB flushes paid since load (read-only)");

static void flush_mm(struct mm_struct *mm)
{
	atomic64_inc(&nr_flushes);
	if (boot_cpu_has(X86_FEATURE_PCID))
		on_each_cpu(flush_ipi, NULL, true);
	else
		on_each_cpu_mask(mm_cpumask(mm), flush_ipi, NULL, true);
}

/* Pay a flush deferred by IDLEMAP_WALK_NOFLUSH, if one is owed. */
static void flush_owed(struct idlemap_file *f)
{
	struct mm_struct *mm = f->flush_owed;

	if (!mm)
		return;
	f->flush_owed = NULL;
	flush_mm(mm);
	mmdrop(mm);
}

/*
 * Empty address space from addr, below end: gaps between VMAs, VM_PFNMAP/
 * VM_IO VMAs (never walked), and inside a VMA every PGD, P4D, PUD or PMD
 * entry that is none, skipped whole.  Returns where something may be
 * mapped (addr if at once), or end.  Under mmap_lock (read), and only
 * inside VMAs: munmap may free page tables of detached VMAs under the read
 * lock, never those of a VMA find_vma returns.  An entry filled right after
 * it was checked is a page faulted in after the walk passed it, which the
 * walk below would miss as well.  Cost: one check per empty entry, at
 * most *steps of them; a hugetlb VMA (its own walk) and anything not none
 * stop it.
 */
static unsigned long empty_end(struct mm_struct *mm, unsigned long addr, unsigned long end,
			       unsigned long *steps)
{
	struct vm_area_struct *vma = NULL;

	/* *steps: checks left in this call; none left: stop looking (a walk follows) */
	for (; addr < end && *steps; --*steps) {
		unsigned long vend;
		pgd_t *pgd;
		p4d_t *p4d;
		pud_t *pud;
		pud_t pudv;
		pmd_t *pmd;

		/* one lookup per VMA, not per entry (no VMA is removed under our lock) */
		if (!vma || addr >= vma->vm_end)
			vma = find_vma(mm, addr);
		if (!vma || vma->vm_start >= end)
			return end;
		if (vma->vm_start > addr) {
			addr = vma->vm_start;
			continue;
		}
		if (vma->vm_flags & (VM_PFNMAP | VM_IO)) {
			addr = vma->vm_end;
			continue;
		}
		if (is_vm_hugetlb_page(vma))
			return addr;
		vend = min(end, vma->vm_end);
		pgd = pgd_offset(mm, addr);
		if (pgd_none(READ_ONCE(*pgd))) {
			addr = pgd_addr_end(addr, vend);
			continue;
		}
		if (pgd_bad(READ_ONCE(*pgd)))
			return addr;
		p4d = p4d_offset(pgd, addr);
		if (p4d_none(READ_ONCE(*p4d))) {
			addr = p4d_addr_end(addr, vend);
			continue;
		}
		if (p4d_bad(READ_ONCE(*p4d)))
			return addr;
		pud = pud_offset(p4d, addr);
		pudv = READ_ONCE(*pud);
		if (pud_none(pudv)) {
			addr = pud_addr_end(addr, vend);
			continue;
		}
		if (pud_bad(pudv))
			return addr;
		pmd = pmd_offset(pud, addr);
		if (pmd_none(READ_ONCE(*pmd))) {
			addr = pmd_addr_end(addr, vend);
			continue;
		}
		return addr;
	}
	return min(addr, end);	/* out of steps: nothing known past addr */
}

static struct mm_struct *target_mm(struct pid *pid)
{
	struct task_struct *task = get_pid_task(pid, PIDTYPE_PID);
	struct mm_struct *mm;

	if (!task)
		return ERR_PTR(-ESRCH);
	mm = get_task_mm(task);		/* NULL: exited (zombie) or a kernel thread */
	put_task_struct(task);
	return mm ? mm : ERR_PTR(-ESRCH);
}

/* Is the bound process still alive with this mm?  (exit_mm clears task->mm.) */
static bool target_alive(struct pid *pid, struct mm_struct *mm)
{
	struct task_struct *task;
	bool ok;

	rcu_read_lock();
	task = pid_task(pid, PIDTYPE_PID);
	ok = task && READ_ONCE(task->mm) == mm;
	rcu_read_unlock();
	return ok;
}

/*
 * One chunk's end: hand its bitmaps to the caller -- copied from buf, or
 * zeroed when buf is NULL (a chunk with nothing mapped) -- then stop on a
 * fatal signal and let others run.  Called with no lock held, so a fault on
 * the user buffers cannot nest in mmap_lock.
 */
static long chunk_out(void __user *const out[BM_N], unsigned long off,
		      unsigned long *const buf[BM_N], unsigned long nbytes)
{
	int k;

	for (k = 0; k < BM_N; k++) {
		if (!out[k])
			continue;
		if (buf ? copy_to_user(out[k] + off, buf[k], nbytes) :
			  clear_user(out[k] + off, nbytes))
			return -EFAULT;
	}
	if (fatal_signal_pending(current))
		return -EINTR;
	cond_resched();
	return 0;
}

/*
 * Walk [start, end) chunk by chunk; bit 0 of every user buffer is the page
 * at start.  out[k]: user buffers to fill (or NULL); sel: a user bitmap of
 * pages to mark (pwrite) or NULL.  Returns the pages done (> 0) or -errno;
 * stats get the counts.  A target that exits or execs mid-call is -ESRCH.
 */
static long run(struct idlemap_file *f, unsigned long start, unsigned long end,
		void __user *const out[BM_N], const void __user *sel, bool clear,
		bool defer, struct idlemap_walk *stats)
{
	struct walk w = { .clear = clear };
	struct mm_struct *mm;
	unsigned long addr, cend;
	/* what this call may still do (above MAX_PAGES_PER_CALL) */
	unsigned long budget = MAX_PAGES_PER_CALL, steps = MAX_SKIP_STEPS;
	bool zero_out = out[BM_IDLE] || out[BM_PRESENT] || out[BM_HUGE] || out[BM_SWAPPED];
	long ret = 0;
	int k;

	if (!clear)
		flush_owed(f);	/* before a read tests bits a stale TLB could hide */
	if (!f->pid)
		return -EBADFD;
	mm = target_mm(f->pid);
	if (IS_ERR(mm)) {
		flush_owed(f);
		return PTR_ERR(mm);
	}
	if (start == f->cont_addr) {	/* the continuation of a call cut short */
		w.huge_lo = f->huge_lo;
		w.huge_hi = f->huge_hi;
		w.huge_young = f->huge_young;
		w.huge_marked = f->huge_marked;
	}
	f->cont_addr = 0;
	/*
	 * Chunks start at multiples of CHUNK_PAGES from start (the bitmaps'
	 * byte offsets), and budget stays a multiple of CHUNK_PAGES until the
	 * last chunk: a call cut short stops at a chunk boundary.
	 */
	for (addr = start; addr < end && budget && steps; addr = cend) {
		unsigned long npages, nbytes, skip, off = ((addr - start) >> PAGE_SHIFT) / BITS_PER_BYTE;

		cend = min(end, addr + CHUNK_PAGES * PAGE_SIZE);
		npages = (cend - addr) >> PAGE_SHIFT;
		nbytes = DIV_ROUND_UP(npages, 64) * 8;
		w.base = addr;
		for (k = 0; k < BM_N; k++) {
			w.bm[k] = out[k] ? f->buf[k] : NULL;
			if (w.bm[k])
				memset(w.bm[k], 0, nbytes);
		}
		w.sel = NULL;
		if (sel) {
			if (copy_from_user(f->sel, sel + off, nbytes)) {
				ret = -EFAULT;
				break;
			}
			w.sel = f->sel;
		}
		ret = mmap_read_lock_killable(mm);
		if (ret)
			break;
		if (!target_alive(f->pid, mm)) {
			mmap_read_unlock(mm);
			ret = -ESRCH;
			break;
		}
		skip = empty_end(mm, addr, end, &steps);
		if (skip >= end || skip - addr >= CHUNK_PAGES * PAGE_SIZE) {
			/* whole chunks of nothing: their bits are 0, no walk */
			mmap_read_unlock(mm);
			cend = skip >= end ? end :
			       addr + rounddown(skip - addr, CHUNK_PAGES * PAGE_SIZE);
			if (zero_out) {
				/* zeroing the caller's bitmaps is work: bounded like a walk */
				cend = min(cend, addr + budget * PAGE_SIZE);
				budget -= (cend - addr) >> PAGE_SHIFT;
			}
			nbytes = DIV_ROUND_UP((cend - addr) >> PAGE_SHIFT, 64) * 8;
			ret = chunk_out(out, off, NULL, nbytes);
			if (ret)
				break;
			continue;
		}
		walk_vmas(&w, mm, addr, cend);
		mmap_read_unlock(mm);
		budget -= npages;
		ret = chunk_out(out, off, f->buf, nbytes);
		if (ret)
			break;
	}
	/*
	 * Flush after any walk that marked: also when it stopped early (some
	 * bits are cleared), and also when no bit was set -- reclaim and
	 * page_idle clear accessed bits without a flush on x86, so a clear
	 * bit does not mean no stale translation.
	 */
	if (clear && defer && !ret) {
		/*
		 * IDLEMAP_WALK_NOFLUSH: owed until a call without it; one
		 * flush then covers every walk of this mm before it.
		 */
		if (w.nr_present && f->flush_owed != mm) {
			flush_owed(f);	/* another target's (a rebind): paid now */
			mmgrab(mm);
			f->flush_owed = mm;
		}
	} else {
		/* an error ends a deferred read too: nothing left owed */
		if (clear && w.nr_present && f->flush_owed != mm)
			flush_mm(mm);
		flush_owed(f);
	}
	mmput(mm);
	if (addr < end && !ret) {	/* cut short by the bound: where to continue */
		f->cont_addr = addr;
		f->huge_lo = w.huge_lo;
		f->huge_hi = w.huge_hi;
		f->huge_young = w.huge_young;
		f->huge_marked = w.huge_marked;
	}
	if (stats) {
		stats->nr_present = w.nr_present;
		stats->nr_idle = w.nr_idle;
	}
	return ret ? ret : (long)((min(addr, end) - start) >> PAGE_SHIFT);
}

/* RFC layout: byte offset b covers the pages from VA b << (3 + PAGE_SHIFT). */
static long rfc_range(loff_t pos, size_t count, unsigned long *start, unsigned long *end)
{
	if (pos < 0 || pos % 8 || count % 8)
		return -EINVAL;
	if (pos >= (VA_LIMIT >> (PAGE_SHIFT + 3)))
		return 0;
	*start = (unsigned long)pos << (PAGE_SHIFT + 3);
	count = min_t(size_t, count, (VA_LIMIT - *start) >> (PAGE_SHIFT + 3));
	*end = *start + ((unsigned long)count << (PAGE_SHIFT + 3));
	return 1;
}

static ssize_t idlemap_read(struct file *file, char __user *ubuf, size_t count, loff_t *ppos)
{
	struct idlemap_file *f = file->private_data;
	void __user *out[BM_N] = { NULL };
	unsigned long start, end;
	long ret = rfc_range(*ppos, count, &start, &end);
	bool present;

	if (ret <= 0)
		return ret;
	if (mutex_lock_killable(&f->lock))
		return -EINTR;
	present = f->mode & IDLEMAP_MODE_PRESENT;
	out[present ? BM_PRESENT : BM_IDLE] = ubuf;
	ret = run(f, start, end, out, NULL, !present && (f->mode & IDLEMAP_MODE_REMARK), false, NULL);
	mutex_unlock(&f->lock);
	if (ret < 0)
		return ret;
	ret = ret / BITS_PER_BYTE;	/* pages -> bytes (whole words: multiples of 64 pages) */
	*ppos += ret;
	return ret;
}

static ssize_t idlemap_write(struct file *file, const char __user *ubuf, size_t count, loff_t *ppos)
{
	struct idlemap_file *f = file->private_data;
	void __user *out[BM_N] = { NULL };
	unsigned long start, end;
	long ret = rfc_range(*ppos, count, &start, &end);

	if (ret < 0)
		return ret;
	if (ret == 0)
		return count ? -ENXIO : 0;	/* past user space, as page_idle's bitmap */
	if (mutex_lock_killable(&f->lock))
		return -EINTR;
	ret = run(f, start, end, out, ubuf, true, false, NULL);
	mutex_unlock(&f->lock);
	if (ret < 0)
		return ret;
	ret = ret / BITS_PER_BYTE;
	*ppos += ret;
	return ret;
}

static long do_bind(struct idlemap_file *f, unsigned long arg)
{
	pid_t nr = (pid_t)arg;
	struct pid *pid, *old;
	struct task_struct *task;
	struct mm_struct *mm;
	bool kthread;

	if (nr <= 0 || (unsigned long)nr != arg)
		return -EINVAL;
	pid = find_get_pid(nr);		/* in the caller's PID namespace */
	if (!pid)
		return -ESRCH;
	task = get_pid_task(pid, PIDTYPE_PID);
	if (!task) {
		put_pid(pid);
		return -ESRCH;
	}
	kthread = task->flags & PF_KTHREAD;
	mm = get_task_mm(task);
	put_task_struct(task);
	if (!mm) {
		put_pid(pid);
		return kthread ? -EINVAL : -ESRCH;
	}
	mmput(mm);
	old = f->pid;
	f->pid = pid;			/* the reference is the fd's until release or rebind */
	put_pid(old);
	f->cont_addr = 0;		/* no continuation across targets */
	return 0;
}

static long do_walk(struct idlemap_file *f, struct idlemap_walk __user *uarg)
{
	struct idlemap_walk a;
	void __user *out[BM_N];
	long ret;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if (a.reserved || a.flags & ~(IDLEMAP_WALK_CLEAR | IDLEMAP_WALK_NOFLUSH) ||
	    a.start % PAGE_SIZE || a.end % PAGE_SIZE || a.start > a.end || a.end > VA_LIMIT)
		return -EINVAL;
	out[BM_IDLE] = u64_to_user_ptr(a.idle);
	out[BM_PRESENT] = u64_to_user_ptr(a.present);
	out[BM_HUGE] = u64_to_user_ptr(a.huge);
	out[BM_SWAPPED] = u64_to_user_ptr(a.swapped);
	a.nr_present = a.nr_idle = 0;
	a.next = a.start;
	if (a.start < a.end) {
		ret = run(f, a.start, a.end, out, NULL, a.flags & IDLEMAP_WALK_CLEAR,
			  a.flags & IDLEMAP_WALK_NOFLUSH, &a);
		if (ret < 0)
			return ret;
		a.next = a.start + ((unsigned long)ret << PAGE_SHIFT);
	}
	if (copy_to_user(uarg, &a, sizeof(a)))
		return -EFAULT;
	return 0;
}

/* Secret, so a signature says nothing about kernel pointers hashed into it. */
static siphash_key_t maps_key;

/*
 * The memory map's signature: each VMA's range, flags, file offset and
 * backing objects (the file, an anonymous name), chained through a keyed
 * SipHash.  Any change to what /proc/PID/maps shows about a VMA's place,
 * permissions or backing changes it, except a file renamed under it (one
 * in 2^64 otherwise: the key is secret, so no process can aim for a match).
 * One pass over the VMAs under mmap_lock (read), the lock /proc/PID/maps
 * takes to print the same list as text.
 */
static long do_maps_sig(struct idlemap_file *f, u64 __user *uarg)
{
	struct vm_area_struct *vma;
	struct mm_struct *mm;
	u64 h;
	int ret;

	if (!f->pid)
		return -EBADFD;
	mm = target_mm(f->pid);
	if (IS_ERR(mm))
		return PTR_ERR(mm);
	ret = mmap_read_lock_killable(mm);
	if (ret) {
		mmput(mm);
		return ret;
	}
	h = siphash_1u64(mm->map_count, &maps_key);
	for (vma = find_vma(mm, 0); vma; vma = find_vma(mm, vma->vm_end)) {
		h = siphash_4u64(h, vma->vm_start, vma->vm_end, vma->vm_flags, &maps_key);
		h = siphash_4u64(h, vma->vm_pgoff, (unsigned long)vma->vm_file,
#ifdef CONFIG_ANON_VMA_NAME
				 (unsigned long)vma->anon_name,
#else
				 0,
#endif
				 &maps_key);
	}
	mmap_read_unlock(mm);
	mmput(mm);
	return put_user(h, uarg);
}

static long idlemap_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct idlemap_file *f = file->private_data;
	long ret;

	if (cmd == IDLEMAP_IOC_VERSION)
		return IDLEMAP_API_VERSION;
	if (mutex_lock_killable(&f->lock))
		return -EINTR;
	switch (cmd) {
	case IDLEMAP_IOC_BIND:
		ret = do_bind(f, arg);
		break;
	case IDLEMAP_IOC_SET_MODE:
		if (arg & ~(unsigned long)(IDLEMAP_MODE_PRESENT | IDLEMAP_MODE_REMARK)) {
			ret = -EINVAL;
			break;
		}
		f->mode = arg;
		ret = 0;
		break;
	case IDLEMAP_IOC_WALK:
		ret = do_walk(f, (struct idlemap_walk __user *)arg);
		break;
	case IDLEMAP_IOC_MAPS_SIG:
		ret = do_maps_sig(f, (u64 __user *)arg);
		break;
	default:
		ret = -ENOTTY;
	}
	/* a deferred flush lasts only over consecutive deferred walks */
	if (cmd != IDLEMAP_IOC_WALK || ret < 0)
		flush_owed(f);
	mutex_unlock(&f->lock);
	return ret;
}

static int idlemap_open(struct inode *inode, struct file *file)
{
	struct idlemap_file *f;
	int k;

	/* Page tables of any process: root only (ptrace_may_access is not exported). */
	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	f = kzalloc(sizeof(*f), GFP_KERNEL);
	if (!f)
		return -ENOMEM;
	mutex_init(&f->lock);
	for (k = 0; k < BM_N; k++)
		f->buf[k] = kmalloc(CHUNK_BYTES, GFP_KERNEL);
	f->sel = kmalloc(CHUNK_BYTES, GFP_KERNEL);
	for (k = 0; k < BM_N; k++)
		if (!f->buf[k])
			goto nomem;
	if (!f->sel)
		goto nomem;
	file->private_data = f;
	return 0;
nomem:
	for (k = 0; k < BM_N; k++)
		kfree(f->buf[k]);
	kfree(f->sel);
	kfree(f);
	return -ENOMEM;
}

static int idlemap_release(struct inode *inode, struct file *file)
{
	struct idlemap_file *f = file->private_data;
	int k;

	flush_owed(f);			/* a read cut short by close or exit */
	put_pid(f->pid);		/* NULL-safe */
	for (k = 0; k < BM_N; k++)
		kfree(f->buf[k]);
	kfree(f->sel);
	kfree(f);
	return 0;
}

static const struct file_operations idlemap_fops = {
	.owner		= THIS_MODULE,	/* the module stays while an fd is open */
	.open		= idlemap_open,
	.release	= idlemap_release,
	.read		= idlemap_read,
	.write		= idlemap_write,
	.unlocked_ioctl	= idlemap_ioctl,
	.llseek		= default_llseek,
};

static struct miscdevice idlemap_dev = {
	.minor	= MISC_DYNAMIC_MINOR,
	.name	= "idlemap",
	.fops	= &idlemap_fops,
	.mode	= 0600,
};

static int __init idlemap_init(void)
{
	get_random_bytes(&maps_key, sizeof(maps_key));
	return misc_register(&idlemap_dev);
}

static void __exit idlemap_exit(void)
{
	misc_deregister(&idlemap_dev);
}

module_init(idlemap_init);
module_exit(idlemap_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("idlemap: per-process idle page tracking indexed by virtual address");
MODULE_VERSION("0.1");
