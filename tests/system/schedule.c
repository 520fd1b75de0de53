/* A workload with a known re-access schedule and (almost) nothing but its
 * data: static, no interpreter, no shared libraries (its other memory --
 * text, stack, a few libc pages -- is well under 1 MiB and touched every
 * round).  Data, in 4 KiB pages (no THP):
 *     [ hot HOT MiB | GROUPS warm groups of GROUP MiB | cold COLD MiB ]
 * Commands on stdin, one byte each, answered with a line on stdout:
 *   g   map and write every page once (send it after joining a cgroup, so
 *       the pages are charged there)                    -> "ready ADDR"
 *   r   one round: write the hot set (unless a loop keeps it hot) and warm
 *       group n mod GROUPS, n = rounds so far            -> "done N"
 *   l   start a thread writing the hot set over and over, never pausing
 *                                                       -> "looping"
 *   c   how many passes over the hot set the loop has made (its speed
 *       is the workload's: bench/advise.py's slowdown)  -> "passes N"
 *   q   exit
 *     schedule HOT_MIB GROUP_MIB GROUPS COLD_MIB
 * The driver (sched_helpers.py) sends a command and waits for its answer
 * before it reads, so every figure is known from the schedule, timing-free.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static volatile char *data;
static size_t hot, group, groups, cold;
static long page;
static volatile int looping;
static volatile unsigned long passes;

static void touch(size_t off, size_t len)
{
    for (size_t o = off; o < off + len; o += page)
        data[o]++;
}

static void *loop(void *arg)
{
    (void)arg;
    for (;;) {
        touch(0, hot);
        passes++;       /* one writer; a torn read is impossible on 64-bit */
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: schedule HOT_MIB GROUP_MIB GROUPS COLD_MIB\n");
        return 2;
    }
    page = sysconf(_SC_PAGESIZE);
    hot = (size_t)atol(argv[1]) << 20;
    group = (size_t)atol(argv[2]) << 20;
    groups = (size_t)atol(argv[3]);
    cold = (size_t)atol(argv[4]) << 20;
    size_t total = hot + groups * group + cold;
    unsigned long rounds = 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    int c;
    while ((c = getchar()) != EOF) {
        if (c == 'g' && !data) {
            data = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (data == MAP_FAILED) {
                perror("mmap");
                return 1;
            }
            madvise((void *)data, total, MADV_NOHUGEPAGE);
            touch(0, total);
            printf("ready %p\n", (void *)data);
        } else if (c == 'r' && data) {
            if (!looping)
                touch(0, hot);
            if (groups)
                touch(hot + (rounds % groups) * group, group);
            rounds++;
            printf("done %lu\n", rounds);
        } else if (c == 'l' && data && !looping) {
            pthread_t t;
            looping = 1;
            if (pthread_create(&t, NULL, loop, NULL) != 0) {
                perror("pthread_create");
                return 1;
            }
            printf("looping\n");
        } else if (c == 'c') {
            printf("passes %lu\n", passes);
        } else if (c == 'q') {
            return 0;
        }
    }
    return 0;
}
