/* A hot-set workload with (almost) nothing but its data: static, no
 * interpreter, no shared libraries.  Maps HOT+COLD MiB of anonymous memory
 * in 4 KiB pages, writes every page once, says "ready", then writes one
 * byte of every hot page, over and over, until killed.
 *
 * Its memory outside the data is well under 1 MiB (text, stack, a few
 * libc pages), so a measured WSS must be within that of HOT MiB: the
 * exact "truth" the system-wide tests compare against.
 *   hotset HOT_MIB COLD_MIB
 * "ready DATA PASSES": the data's address and that of a counter of full
 * passes over the hot set (read through /proc/PID/mem: the loop's speed,
 * so a benchmark can tell what a scan costs the target).
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile unsigned long passes;

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: hotset HOT_MIB COLD_MIB\n");
        return 2;
    }
    long page = sysconf(_SC_PAGESIZE);
    size_t hot = (size_t)atol(argv[1]) << 20, cold = (size_t)atol(argv[2]) << 20;
    volatile char *p = mmap(NULL, hot + cold, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    madvise((void *)p, hot + cold, MADV_NOHUGEPAGE);   /* 4 KiB pages: the hard case */
    for (size_t off = 0; off < hot + cold; off += page)
        p[off] = 1;
    printf("ready %p %p\n", (void *)p, (void *)&passes);
    fflush(stdout);
    for (;;) {
        for (size_t off = 0; off < hot; off += page)
            p[off]++;
        passes++;
    }
}
