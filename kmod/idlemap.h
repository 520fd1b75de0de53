/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * /dev/idlemap: per-process idle page tracking indexed by virtual address.
 * The user-space interface of idlemap_kmod (docs/kmod.md).  Kept in step
 * with src/idlemap/kernel/kmod.py, which spells the same numbers in Python.
 */
#ifndef _IDLEMAP_H
#define _IDLEMAP_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define IDLEMAP_API_VERSION	3

/* Private to /dev/idlemap (a misc device of its own). */
#define IDLEMAP_IOC_MAGIC	0xB7

/* ioctl(fd, IDLEMAP_IOC_VERSION): returns IDLEMAP_API_VERSION. */
#define IDLEMAP_IOC_VERSION	_IO(IDLEMAP_IOC_MAGIC, 0)
/* ioctl(fd, IDLEMAP_IOC_BIND, pid): bind the fd to a process (pid by value). */
#define IDLEMAP_IOC_BIND	_IO(IDLEMAP_IOC_MAGIC, 1)
/* ioctl(fd, IDLEMAP_IOC_SET_MODE, mode): what pread returns (below). */
#define IDLEMAP_IOC_SET_MODE	_IO(IDLEMAP_IOC_MAGIC, 2)
/* ioctl(fd, IDLEMAP_IOC_WALK, &walk): every bitmap of a range in one walk. */
#define IDLEMAP_IOC_WALK	_IOWR(IDLEMAP_IOC_MAGIC, 3, struct idlemap_walk)
/*
 * ioctl(fd, IDLEMAP_IOC_MAPS_SIG, &u64): a signature of the bound process's
 * memory map -- every VMA's range, flags, offset and backing object, hashed
 * with a key secret to the module -- that changes whenever any of them does.
 * A reader re-reads /proc/PID/maps only when it differs from the last one.
 */
#define IDLEMAP_IOC_MAPS_SIG	_IOR(IDLEMAP_IOC_MAGIC, 4, __u64)

/* Modes for pread (IDLEMAP_IOC_SET_MODE); pwrite always marks idle. */
#define IDLEMAP_MODE_IDLE	0x0	/* the RFC's idle bitmap (default) */
#define IDLEMAP_MODE_PRESENT	0x1	/* 1 = a page is mapped (holes are 0) */
#define IDLEMAP_MODE_REMARK	0x100	/* idle reads also clear the accessed
					 * bits they test, and flush the TLB:
					 * read and re-mark in one walk */

/* Flags for struct idlemap_walk. */
#define IDLEMAP_WALK_CLEAR	0x1	/* test-and-clear the accessed bits
					 * (mark idle), then flush the TLB */
#define IDLEMAP_WALK_NOFLUSH	0x2	/* with CLEAR: leave the flush pending;
					 * the next call on the fd without it
					 * (any other call, an error, or close)
					 * flushes once for every walk deferred */

/*
 * One walk of [start, end) (page aligned).  Bit i of each bitmap (u64
 * words, bit i%64 of word i/64) is the page at start + i * PAGE_SIZE; each
 * non-zero pointer must hold round_up(npages, 64) / 8 bytes, and whole
 * words are written.  The module bounds its work per call: on return
 * `next` is where it stopped (== end when done, otherwise start + a
 * multiple of 64 pages): call again from there with the pointers advanced.
 */
struct idlemap_walk {
	__u64 start;		/* in */
	__u64 end;		/* in */
	__u64 idle;		/* in: user pointer or 0; 1 = present, not accessed */
	__u64 present;		/* in: user pointer or 0; 1 = mapped (PTE or PMD) */
	__u64 huge;		/* in: user pointer or 0; 1 = mapped by a huge PMD */
	__u64 swapped;		/* in: user pointer or 0; 1 = swap/migration entry */
	__u32 flags;		/* in: IDLEMAP_WALK_* */
	__u32 reserved;		/* in: must be 0 */
	__u64 next;		/* out */
	__u64 nr_present;	/* out: present pages walked in this call */
	__u64 nr_idle;		/* out: of those, not accessed */
};

#endif /* _IDLEMAP_H */
