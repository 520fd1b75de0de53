/* A minimal KVM virtual machine monitor, for the tests of the rule that
 * keeps page_idle for a KVM guest's VMM.
 *
 *   kvmguest HOT_PAGES
 *
 * It creates a KVM VM with one vCPU, gives it guest RAM from an anonymous
 * mapping of its own (4 KiB pages: MADV_NOHUGEPAGE), and runs a guest that
 * never pauses: in 32-bit protected mode with flat segments, it adds 1 to
 * the first word of each of HOT_PAGES pages from guest-physical 1 MiB on,
 * adds 1 to its pass counter (the first word of the page just below), tells
 * the VMM with an OUT to port 0x10, and starts again.  The
 * guest's stores go through the nested page tables KVM keeps, never
 * through this process's own page tables: that is what a backend walking
 * only the host's page tables cannot see.
 *
 * On stdout: "ready ADDR PAGES" (ADDR: where the hot pages are in this
 * process, hex), then "pass N" at N = 1, 2, 4, 8... completed passes.  The
 * counter is at ADDR - 4096, readable at any time through /proc/PID/mem
 * without touching a hot page.
 * Exits 1 with a sentence on stderr if KVM is missing or the guest stops
 * for any other reason.  Not named like any VMM idlemap knows, on purpose:
 * it is recognised by the KVM VM descriptor it holds.
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096UL
#define CODE 0x1000UL        /* guest-physical address of the loop */
#define DATA 0x100000UL      /* guest-physical address of the first hot page */
#define COUNT (DATA - PAGE)  /* the guest's pass counter */
#define PORT 0x10

static void die(const char *what)
{
    perror(what);
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc != 2 || atol(argv[1]) <= 0) {
        fprintf(stderr, "usage: kvmguest HOT_PAGES\n");
        return 2;
    }
    uint32_t pages = (uint32_t)atol(argv[1]);
    size_t size = DATA + (size_t)pages * PAGE;

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("open /dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0)
        die("KVM_CREATE_VM");
    uint8_t *ram = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ram == MAP_FAILED)
        die("mmap");
    madvise(ram, size, MADV_NOHUGEPAGE);

    /* mov edi, DATA; mov ecx, pages;
     * L: add dword [edi], 1; add edi, 4096; dec ecx; jnz L;
     * add dword [COUNT], 1; out PORT, al; jmp to the start */
    uint8_t code[] = {
        0xbf, DATA & 0xff, (DATA >> 8) & 0xff, (DATA >> 16) & 0xff, DATA >> 24,
        0xb9, pages & 0xff, (pages >> 8) & 0xff, (pages >> 16) & 0xff, pages >> 24,
        0x83, 0x07, 0x01,
        0x81, 0xc7, 0x00, 0x10, 0x00, 0x00,
        0x49,
        0x75, 0xf4,          /* jnz -12: back to the add at offset 10 */
        0x83, 0x05, COUNT & 0xff, (COUNT >> 8) & 0xff, (COUNT >> 16) & 0xff, COUNT >> 24, 0x01,
        0xe6, PORT,
        0xeb, 0xdf,          /* jmp -33: back to offset 0 */
    };
    memcpy(ram + CODE, code, sizeof code);

    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = size, .userspace_addr = (uintptr_t)ram,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        die("KVM_SET_USER_MEMORY_REGION");
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0)
        die("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < 0)
        die("KVM_GET_VCPU_MMAP_SIZE");
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap vcpu");

    /* Flat 32-bit protected mode: KVM loads the segments' hidden parts
     * from here, so the guest needs no descriptor table of its own. */
    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
        die("KVM_GET_SREGS");
    struct kvm_segment seg = {
        .base = 0, .limit = 0xffffffff, .selector = 0x08, .type = 11,
        .present = 1, .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1,
    };
    sregs.cs = seg;
    seg.type = 3;
    seg.selector = 0x10;
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = seg;
    sregs.cr0 |= 1;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
        die("KVM_SET_SREGS");
    struct kvm_regs regs = { .rip = CODE, .rflags = 2 };
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
        die("KVM_SET_REGS");

    printf("ready %lx %u\n", (unsigned long)(uintptr_t)(ram + DATA), pages);
    fflush(stdout);
    for (uint64_t passes = 0;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0)
            die("KVM_RUN");
        if (run->exit_reason == KVM_EXIT_IO && run->io.port == PORT) {
            passes++;
            if ((passes & (passes - 1)) == 0) {
                printf("pass %llu\n", (unsigned long long)passes);
                fflush(stdout);
            }
            continue;
        }
        fprintf(stderr, "kvmguest: the guest stopped (KVM exit reason %u)\n", run->exit_reason);
        return 1;
    }
}
