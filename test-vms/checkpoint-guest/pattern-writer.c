// pattern-writer: the workload side of the P/Q checkpoint test (stage 41).
// Fills PAGES locked pages with pattern P ('P' + page index in the first 8 bytes), writes
// their pfns (from /proc/self/pagemap, needs root) one per line to PFNFILE, then waits until
// the file GO exists (created once the checkpoint's capture is done), checks that every
// page still holds P (prints "PATTERN-P-INTACT n/n", or "PATTERN-P-CHANGED k/n"), writes
// pattern Q everywhere, prints "PATTERN-Q-WRITTEN" and keeps the buffer alive.
// A checkpoint taken in between must hold P at every listed pfn, never Q.
// Usage: pattern-writer PAGES PFNFILE GO
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PG 4096

static void fill(uint8_t *p, int i, char c)
{
	memset(p, c, PG);
	uint64_t tag = ((uint64_t)c << 56) | (uint64_t)i;
	memcpy(p, &tag, 8);
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: pattern-writer PAGES PFNFILE GO\n");
		return 2;
	}
	int n = atoi(argv[1]);
	if (n < 1 || n > 65536) {
		fprintf(stderr, "pattern-writer: PAGES must be 1..65536\n");
		return 2;
	}
	uint8_t *buf = mmap(NULL, (size_t)n * PG, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (buf == MAP_FAILED || mlock(buf, (size_t)n * PG)) {
		perror("pattern-writer: mmap/mlock");
		return 1;
	}
	for (int i = 0; i < n; i++)
		fill(buf + (size_t)i * PG, i, 'P');
	int pm = open("/proc/self/pagemap", O_RDONLY);
	FILE *out = fopen(argv[2], "w");
	if (pm < 0 || !out) {
		perror("pattern-writer: pagemap/pfnfile");
		return 1;
	}
	for (int i = 0; i < n; i++) {
		uint64_t e;
		if (pread(pm, &e, 8, ((uintptr_t)(buf + (size_t)i * PG) / PG) * 8) != 8 || !(e >> 63)) {
			fprintf(stderr, "pattern-writer: page %d not present\n", i);
			return 1;
		}
		fprintf(out, "%llu\n", (unsigned long long)(e & ((1ULL << 55) - 1)));
	}
	fclose(out);
	printf("PATTERN-P-WRITTEN pages=%d pfns=%s\n", n, argv[2]);
	fflush(stdout);
	while (access(argv[3], F_OK) != 0)
		usleep(100000);
	// Still P? In a guest revived from the checkpoint this is the proof that the buffer
	// came back with the capture point's contents.
	static uint8_t want[PG];
	int intact = 0;
	for (int i = 0; i < n; i++) {
		fill(want, i, 'P');
		intact += memcmp(buf + (size_t)i * PG, want, PG) == 0;
	}
	printf("%s %d/%d\n", intact == n ? "PATTERN-P-INTACT" : "PATTERN-P-CHANGED", intact, n);
	for (int i = 0; i < n; i++)
		fill(buf + (size_t)i * PG, i, 'Q');
	printf("PATTERN-Q-WRITTEN\n");
	fflush(stdout);
	for (;;)
		pause();
}
