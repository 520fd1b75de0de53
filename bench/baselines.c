/*
 * The two strategies idlemap is measured against, written for the bench
 * from their published descriptions (Brendan Gregg's wss-v1 and wss-v2,
 * 2018), in C like the originals, so the comparison is not Python vs C.
 *
 *   baselines v1 mark|read PID LO HI   per page: one pagemap pread, then one
 *                                      bitmap pwrite (mark) or pread (read)
 *                                      of the frame's 8-byte word
 *   baselines v1pub mark|read ...      v1 as published: lseek + read/write
 *                                      (two syscalls per access) and the mark
 *                                      writes an all-ones word, marking the
 *                                      frame's 63 neighbours too
 *   baselines v2 mark|read PID LO HI   whole machine: write all-ones over the
 *                                      entire bitmap (mark); read the entire
 *                                      bitmap, then the process's pagemap
 *                                      and look each frame up (read)
 *   baselines v2pub mark|read ...      v2 as published: the bitmap is read
 *                                      8 bytes per call
 *
 * Both walk every mapping of PID (as the tools do).  LO-HI (hex VAs) is the
 * target mapping: its pages are counted separately, split into even and odd
 * page indices, so the bench can check exactness against a workload that
 * touched every other page.
 *
 * Deliberate differences from the published tools (v1pub keeps v1's), each
 * making the baseline cheaper or exact, never slower:
 *   v1: pread/pwrite instead of lseek+read/write (half the syscalls); the
 *       mark writes only the frame's own bit, where wss-v1 writes ~0 and so
 *       also marks (rmap-walks) up to 63 neighbouring frames per page.
 *   v2: the bitmap is read in 4096-byte calls (the kernel's cap per call;
 *       wss-v2 reads 8 bytes per call); pagemap is read in 512 KiB chunks
 *       instead of one malloc per mapping, so a 1 TiB reservation fits;
 *       frames are tested with the present bit (wss-v* test pfn != 0).
 * Output: one JSON object on stdout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define BITMAP "/sys/kernel/mm/page_idle/bitmap"
#define PFN_MASK ((1ULL << 55) - 1)
#define PRESENT (1ULL << 63)
#define CHUNK 65536 /* pagemap entries per read in v2 */

static long page_size;
static uint64_t lo_va, hi_va;
static uint64_t walked, accessed, syscalls;
static uint64_t t_pages, t_acc_even, t_acc_odd;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double tv(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

static void die(const char *what)
{
	fprintf(stderr, "baselines: %s: %s\n", what, strerror(errno));
	exit(2);
}

/* Call fn(start, end) for every user mapping of pid. */
static void each_mapping(int pid, void (*fn)(uint64_t, uint64_t))
{
	char path[64], line[4096];
	snprintf(path, sizeof path, "/proc/%d/maps", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		die(path);
	while (fgets(line, sizeof line, f)) {
		unsigned long long a, b;
		if (sscanf(line, "%llx-%llx", &a, &b) != 2)
			continue;
		if (a >= 0xffff800000000000ULL)
			continue; /* [vsyscall]: not in the page tables */
		fn(a, b);
	}
	fclose(f);
}

static void count(uint64_t va, int idle)
{
	walked++;
	if (!idle)
		accessed++;
	if (va >= lo_va && va < hi_va) {
		uint64_t i = (va - lo_va) / page_size;
		t_pages++;
		if (!idle) {
			if (i % 2)
				t_acc_odd++;
			else
				t_acc_even++;
		}
	}
}

/* ---- v1: per page ---------------------------------------------------- */
static int pm_fd, bm_fd, v1_mark, v1_pub;

/* v1pub: the published tool's lseek + read/write pairs */
static ssize_t at(int fd, void *buf, off_t off, int wr)
{
	syscalls += 2;
	if (lseek(fd, off, SEEK_SET) < 0)
		return -1;
	return wr ? write(fd, buf, 8) : read(fd, buf, 8);
}

static void v1_mapping(uint64_t start, uint64_t end)
{
	for (uint64_t va = start; va < end; va += page_size) {
		uint64_t e, w;
		if (v1_pub) {
			if (at(pm_fd, &e, va / page_size * 8, 0) != 8)
				break;
			if (!(e & PFN_MASK))
				continue;
			uint64_t pfn = e & PFN_MASK;
			if (v1_mark) {
				w = ~0ULL;
				at(bm_fd, &w, pfn / 64 * 8, 1);
			} else {
				if (at(bm_fd, &w, pfn / 64 * 8, 0) != 8)
					w = 0;
				count(va, (w >> (pfn % 64)) & 1);
			}
			continue;
		}
		if (pread(pm_fd, &e, 8, va / page_size * 8) != 8)
			break;
		syscalls++;
		if (!(e & PRESENT) || !(e & PFN_MASK))
			continue;
		uint64_t pfn = e & PFN_MASK;
		if (v1_mark) {
			w = 1ULL << (pfn % 64);
			if (pwrite(bm_fd, &w, 8, pfn / 64 * 8) != 8 && errno != ENXIO)
				die("pwrite bitmap");
			syscalls++;
		} else {
			if (pread(bm_fd, &w, 8, pfn / 64 * 8) != 8)
				w = 0;
			syscalls++;
			count(va, (w >> (pfn % 64)) & 1);
		}
	}
}

/* ---- v2: whole bitmap ------------------------------------------------ */
static uint64_t *bitmap_words;
static size_t bitmap_nwords;
static uint64_t *chunk;

static void v2_set_all(void)
{
	static uint64_t ones[512];
	memset(ones, 0xff, sizeof ones);
	for (off_t off = 0;; off += sizeof ones) {
		ssize_t n = pwrite(bm_fd, ones, sizeof ones, off);
		syscalls++;
		if (n <= 0)
			break; /* ENXIO past the last frame */
	}
}

static int v2_pub;

static void v2_load_all(void)
{
	size_t cap = 1 << 16;
	size_t chunk_bytes = v2_pub ? 8 : 4096;
	bitmap_words = malloc(cap * 8);
	for (;;) {
		if (bitmap_nwords + chunk_bytes / 8 > cap) {
			cap *= 2;
			bitmap_words = realloc(bitmap_words, cap * 8);
			if (!bitmap_words)
				die("realloc");
		}
		ssize_t n = pread(bm_fd, bitmap_words + bitmap_nwords, chunk_bytes, bitmap_nwords * 8);
		syscalls++;
		if (n <= 0)
			break;
		bitmap_nwords += n / 8;
	}
}

static void v2_mapping(uint64_t start, uint64_t end)
{
	uint64_t first = start / page_size, n = (end - start) / page_size;
	for (uint64_t done = 0; done < n;) {
		uint64_t want = n - done < CHUNK ? n - done : CHUNK;
		ssize_t got = pread(pm_fd, chunk, want * 8, (first + done) * 8);
		syscalls++;
		if (got <= 0)
			return;
		for (uint64_t i = 0; i < (uint64_t)got / 8; i++) {
			uint64_t e = chunk[i];
			if (!(e & PRESENT) || !(e & PFN_MASK))
				continue;
			uint64_t pfn = e & PFN_MASK, w = 0;
			if (pfn / 64 < bitmap_nwords)
				w = bitmap_words[pfn / 64];
			count((first + done + i) * page_size, (w >> (pfn % 64)) & 1);
		}
		done += got / 8;
	}
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: %s v1|v1pub|v2|v2pub mark|read PID LO HI\n", argv[0]);
		return 2;
	}
	v2_pub = !strcmp(argv[1], "v2pub");
	int v2 = !strcmp(argv[1], "v2") || v2_pub;
	v1_pub = !strcmp(argv[1], "v1pub");
	int mark = !strcmp(argv[2], "mark");
	int pid = atoi(argv[3]);
	lo_va = strtoull(argv[4], NULL, 16);
	hi_va = strtoull(argv[5], NULL, 16);
	page_size = sysconf(_SC_PAGESIZE);
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/pagemap", pid);

	struct rusage r0, r1;
	getrusage(RUSAGE_SELF, &r0);
	double t0 = now();
	if ((pm_fd = open(path, O_RDONLY)) < 0)
		die(path);
	if ((bm_fd = open(BITMAP, mark ? O_WRONLY : O_RDONLY)) < 0)
		die(BITMAP);
	if (v2) {
		if (mark) {
			v2_set_all();
		} else {
			chunk = malloc(CHUNK * 8);
			v2_load_all();
			each_mapping(pid, v2_mapping);
		}
	} else {
		v1_mark = mark;
		each_mapping(pid, v1_mapping);
	}
	double t1 = now();
	getrusage(RUSAGE_SELF, &r1);
	printf("{\"algo\": \"%s\", \"phase\": \"%s\", \"wall_s\": %.6f, \"user_s\": %.6f, "
	       "\"sys_s\": %.6f, \"syscalls\": %" PRIu64 ", \"walked\": %" PRIu64 ", "
	       "\"accessed\": %" PRIu64 ", \"target_pages\": %" PRIu64 ", "
	       "\"target_accessed_even\": %" PRIu64 ", \"target_accessed_odd\": %" PRIu64 ", "
	       "\"bitmap_words\": %zu}\n",
	       argv[1], argv[2], t1 - t0, tv(r1.ru_utime) - tv(r0.ru_utime),
	       tv(r1.ru_stime) - tv(r0.ru_stime), syscalls, walked, accessed, t_pages,
	       t_acc_even, t_acc_odd, bitmap_nwords);
	return 0;
}
