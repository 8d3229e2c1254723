// mm-churn: address-space churn while the guest is tracked (mprotect, munmap, fork, exec),
// each step checking the semantics a dirty tracker must not break: a page made read-only
// faults on write and keeps its content, made writable again it takes writes, an unmapped
// page faults, a forked child's writes stay out of the parent's copy, exec works.
// Prints "MM-CHURN OK <iterations>" every 20 iterations and "MM-CHURN FAIL: why" (exit 1)
// on the first violation. Usage: mm-churn [SECONDS] (default: forever).
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PG 4096
#define NPAGES 64

static sigjmp_buf jb;
static volatile sig_atomic_t faults;

static void on_segv(int sig)
{
	(void)sig;
	faults++;
	siglongjmp(jb, 1);
}

#define FAIL(...) do { printf("MM-CHURN FAIL: " __VA_ARGS__); printf("\n"); fflush(stdout); exit(1); } while (0)

/* Writes one byte at p; returns 1 if the write faulted. */
static int write_faults(volatile uint8_t *p, uint8_t v)
{
	if (sigsetjmp(jb, 1))
		return 1;
	*p = v;
	return 0;
}

static int read_faults(volatile uint8_t *p)
{
	if (sigsetjmp(jb, 1))
		return 1;
	(void)*p;
	return 0;
}

int main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 0;
	struct sigaction sa = { .sa_handler = on_segv, .sa_flags = SA_NODEFER };
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (unsigned long it = 1;; it++) {
		uint8_t *m = mmap(NULL, NPAGES * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m == MAP_FAILED)
			FAIL("mmap");
		for (int i = 0; i < NPAGES; i++)
			memset(m + i * PG, (int)(it + i) & 0xff, PG);
		/* Read-only: writes fault, content stays. */
		if (mprotect(m, NPAGES * PG, PROT_READ))
			FAIL("mprotect RO");
		for (int i = 0; i < NPAGES; i += 7)
			if (!write_faults(m + i * PG + 5, 0xee))
				FAIL("write to a read-only page succeeded (iteration %lu page %d)", it, i);
		for (int i = 0; i < NPAGES; i++)
			if (m[i * PG + 5] != (uint8_t)(it + i))
				FAIL("read-only page %d lost its content", i);
		/* Writable again: writes land. */
		if (mprotect(m, NPAGES * PG, PROT_READ | PROT_WRITE))
			FAIL("mprotect RW");
		for (int i = 0; i < NPAGES; i += 3)
			if (write_faults(m + i * PG + 9, 0x11) || m[i * PG + 9] != 0x11)
				FAIL("write after mprotect RW failed (page %d)", i);
		/* fork: the child's writes are its own (copy-on-write), its exit status says whether
		 * it saw the parent's content; then exec. */
		for (int i = 0; i < NPAGES; i++)
			m[i * PG + 100] = 0x55;
		pid_t c = fork();
		if (c < 0)
			FAIL("fork");
		if (c == 0) {
			int ok = m[9] == 0x11 && m[PG + 5] == (uint8_t)(it + 1);
			memset(m, 0x77, NPAGES * PG);
			if (it % 4 == 0)
				execl("/bin/busybox", "true", (char *)NULL);
			_exit(ok ? 0 : 3);
		}
		int st;
		if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
			FAIL("child (iteration %lu) exited with %#x", it, st);
		for (int i = 0; i < NPAGES; i++)
			if (m[i * PG + 100] != 0x55)
				FAIL("the child's write reached the parent (page %d)", i);
		/* munmap half: those fault, the rest still holds its content. */
		if (munmap(m, NPAGES / 2 * PG))
			FAIL("munmap");
		if (!read_faults(m + PG))
			FAIL("read of an unmapped page succeeded");
		for (int i = NPAGES / 2; i < NPAGES; i++)
			if (m[i * PG + 5] != (uint8_t)(it + i))
				FAIL("page %d changed after munmap of its neighbours", i);
		munmap(m + NPAGES / 2 * PG, NPAGES / 2 * PG);
		if (it % 20 == 0) {
			printf("MM-CHURN OK %lu (faults %d)\n", it, (int)faults);
			fflush(stdout);
		}
		clock_gettime(CLOCK_MONOTONIC, &t);
		if (secs > 0 && (t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 > secs) {
			printf("MM-CHURN DONE %lu iterations\n", it);
			return 0;
		}
		usleep(20000);
	}
}
