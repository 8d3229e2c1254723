// track-oracle: the fault tracker checked against the scan tracker, in the guest, under
// whatever workload runs beside it (docs/fault-tracker.md). For each tracker in turn
// (fault with the oracle on, then scan, then with "figures" fault alone):
//  - pre-copy rounds, reading every page reported (as checkpointd would), keeping one
//    hash per pfn of the content read: the image a checkpoint would hold;
//  - fault+oracle: every page the scan saw change in a round must be in the fault
//    tracker's set of that round;
//  - a capture, then the capture set is read; the digest of the image (every pfn, zeros
//    where nothing was read) must equal the digest the module computed of memory at the
//    capture point (every run);
//  - figures: pages per round, capture pause, snapshot pages used, and the throughput of
//    a page writer (a child touching 16 MiB) while tracking / without tracking (before and
//    after the session).
// Prints TRACK-ORACLE lines, then "TRACK-ORACLE PASS" or "TRACK-ORACLE FAIL: why" and
// exits 0/1. Usage: track-oracle ROUNDS SNAPSHOT_PAGES [figures]  (figures: a digest
// mismatch is reported and the run goes on to the other trackers, then fails)
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint_abi.h" /* generated from checkpoint-abi (the one ABI definition) */

#define PG CKPT_PAGE_SIZE
#define FAIL(...) do { printf("TRACK-ORACLE FAIL: " __VA_ARGS__); printf("\n"); exit(1); } while (0)

static int fd;
static struct ckpt_facts F;
static uint64_t *img_hash; /* per pfn: hash of the content last read (the image) */
static uint64_t *bm, *obm, *cbm;
static uint64_t words;
static uint8_t buf[256 * PG];
static volatile uint64_t *bench_count;
static int keep_going, digest_failed; /* argv[3] = "figures": report a digest mismatch, go on */

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

/* This process's CPU time, user (mostly hash_page of every page read: this test's own work,
 * checkpointd does not hash, so the throughput figure is also given without it) and system
 * (reading pages, the ioctls: printed beside the figure). */
static void cpu_times(double *user, double *sys)
{
	struct rusage u;
	getrusage(RUSAGE_SELF, &u);
	*user = u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6;
	*sys = u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
}

static int test_bit(const uint64_t *b, uint64_t pfn) { return (b[pfn / 64] >> (pfn % 64)) & 1; }

/* The module's page hash (kmod/ckpt_main.rs hash_page), so that digests compare. */
static uint64_t hash_page(const uint8_t *p)
{
	const uint64_t K = 0x9E3779B97F4A7C15ull;
	const uint64_t *w = (const uint64_t *)p;
	uint64_t a = K, b = K ^ 1, c = K ^ 2, d = K ^ 3;
#define ROTL(x, r) (((x) << (r)) | ((x) >> (64 - (r))))
	for (int i = 0; i < PG / 8; i += 4) {
		a = ROTL(a ^ w[i], 31) * K;
		b = ROTL(b ^ w[i + 1], 29) * K;
		c = ROTL(c ^ w[i + 2], 27) * K;
		d = ROTL(d ^ w[i + 3], 25) * K;
	}
	uint64_t h = a ^ ROTL(b, 17) ^ ROTL(c, 34) ^ ROTL(d, 51);
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	if (h == 0 || h == UINT64_MAX)
		h = 1;
	return h;
}

/* The digest of an image: order-independent sum over pfns (the module's capture_digest). */
static uint64_t digest(void)
{
	uint64_t d = 0;
	for (uint64_t pfn = 0; pfn < F.max_pfn; pfn++)
		d += (img_hash[pfn] ^ (pfn * 0x9E3779B97F4A7C15ull)) * 0xff51afd7ed558ccdull;
	return d;
}

static uint64_t read_set(const uint64_t *b)
{
	uint64_t n = 0, pfn = 0;
	while (pfn < F.max_pfn) {
		if (!test_bit(b, pfn)) { pfn++; continue; }
		uint64_t run = 1;
		while (run < 256 && pfn + run < F.max_pfn && test_bit(b, pfn + run))
			run++;
		ssize_t got = pread(fd, buf, run * PG, pfn * PG);
		if (got != (ssize_t)(run * PG))
			FAIL("pread pfn %llu x%llu: %s", (unsigned long long)pfn,
			     (unsigned long long)run, strerror(errno));
		for (uint64_t k = 0; k < run; k++)
			img_hash[pfn + k] = hash_page(buf + k * PG);
		n += run;
		pfn += run;
	}
	return n;
}

/* Child: writes one byte in each page of 16 MiB, forever; counts pages written. */
static void bench(void)
{
	size_t len = 16 << 20;
	uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		_exit(1);
	for (uint64_t v = 0;; v++)
		for (size_t o = 0; o < len; o += PG) {
			m[o] = (uint8_t)v;
			(*bench_count)++;
		}
}

/* Free memory for the snapshot buffer, in pages (MemAvailable less 24 MiB of headroom). */
static uint64_t avail_pages(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[128];
	unsigned long long kb = 0;
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb > 24 * 1024 ? (kb - 24 * 1024) / 4 : 0;
}

static double rate(double secs)
{
	uint64_t c0 = *bench_count;
	double t0 = now();
	usleep((useconds_t)(secs * 1e6));
	return (*bench_count - c0) / (now() - t0);
}

/* One session: 0 = scan tracker, else flags for the fault tracker. */
static void session(const char *name, uint64_t flags, int rounds, uint64_t snap_pages)
{
	int oracle = (flags & CKPT_TRACK_ORACLE) != 0;
	for (uint64_t pfn = 0; pfn < F.max_pfn; pfn++)
		img_hash[pfn] = hash_page((const uint8_t[PG]){0});
	double base = rate(3.0);
	struct ckpt_track t = { .flags = flags };
	if (ioctl(fd, CKPT_IOC_TRACK_START, &t))
		FAIL("%s: TRACK_START: %s", name, strerror(errno));
	uint64_t c0 = *bench_count;
	double t0 = now(), tmax = 0, u0, s0;
	cpu_times(&u0, &s0);
	uint64_t missing_total = 0, oracle_total = 0, last = 0, deferred = 0;
	for (int r = 1; r <= rounds; r++) {
		memset(bm, 0, words * 8);
		memset(obm, 0, words * 8);
		struct ckpt_round R = { .bitmap = (uintptr_t)bm, .bitmap_bytes = words * 8 };
		if (oracle)
			R.oracle_bitmap = (uintptr_t)obm;
		double r0 = now();
		if (ioctl(fd, CKPT_IOC_NEXT_ROUND, &R))
			FAIL("%s: NEXT_ROUND %d: %s", name, r, strerror(errno));
		double r1 = now();
		uint64_t missing = 0, first = UINT64_MAX;
		if (oracle && r > 1) {
			for (uint64_t w = 0; w < words; w++) {
				uint64_t m = obm[w] & ~bm[w];
				if (m && first == UINT64_MAX)
					first = w * 64 + __builtin_ctzll(m);
				missing += __builtin_popcountll(m);
			}
			missing_total += missing;
			oracle_total += R.oracle_dirty;
		}
		/* The last round's set is not read, as checkpointd does when it stops pre-copy:
		 * pages a round reports that the owner never reads must be in the capture set
		 * (the digest below checks it). */
		uint64_t n = r < rounds ? read_set(bm) : 0;
		double r2 = now();
		last = R.dirty;
		deferred = R.deferred;
		printf("TRACK-ORACLE %s round %d: pages %llu (read %llu) oracle %llu missing %llu "
		       "ioctl %.0f ms read %.0f ms\n", name, r, (unsigned long long)R.dirty,
		       (unsigned long long)n, (unsigned long long)R.oracle_dirty,
		       (unsigned long long)missing, (r1 - r0) * 1e3, (r2 - r1) * 1e3);
		if (missing)
			printf("TRACK-ORACLE %s round %d: first missing pfn %llu\n", name, r,
			       (unsigned long long)first);
		if (r2 - r0 > tmax)
			tmax = r2 - r0;
	}
	double t_end = now(), u_own, s_own;
	cpu_times(&u_own, &s_own);
	u_own -= u0;
	s_own -= s0;
	double tracked = (*bench_count - c0) / (t_end - t0);
	double tracked_nh = (*bench_count - c0) / (t_end - t0 - u_own);
	memset(cbm, 0, words * 8);
	static uint8_t vcpu[8192];
	/* The final set is the last round's set (not read), what was written since (about one
	 * more round's set; rounds are slower on a loaded host) and the pages rounds leave to
	 * the capture (deferred): room for 2.5 of the last set plus those, within what the
	 * guest has free. */
	uint64_t want = 2 * last + last / 2 + deferred, avail = avail_pages();
	if (want < snap_pages)
		want = snap_pages;
	if (want > avail)
		want = avail > snap_pages ? avail : snap_pages;
	if (want > F.max_pfn)
		want = F.max_pfn;
	struct ckpt_capture C = {
		.flags = CKPT_CAPTURE_ORACLE, /* the digest is taken after pause_ns stops */
		.max_snapshot_pages = want,
		.bitmap = (uintptr_t)cbm, .bitmap_bytes = words * 8,
		.vcpu = (uintptr_t)vcpu, .vcpu_bytes = sizeof(vcpu),
	};
	if (ioctl(fd, CKPT_IOC_CAPTURE, &C))
		FAIL("%s: CAPTURE: %s (snapshot_pages %llu, buffer %llu pages)", name,
		     strerror(errno), (unsigned long long)C.snapshot_pages,
		     (unsigned long long)want);
	if (C.result != 1)
		FAIL("%s: CAPTURE result %llu", name, (unsigned long long)C.result);
	uint64_t n = read_set(cbm);
	printf("TRACK-ORACLE %s capture: pause %.2f ms, set %llu pages (read %llu), snapshot used %llu "
	       "of %llu, suspend %.0f ms\n", name, C.pause_ns / 1e6,
	       (unsigned long long)C.snapshot_pages, (unsigned long long)n,
	       (unsigned long long)C.snapshot_hwm, (unsigned long long)want,
	       C.suspend_ns / 1e6);
	uint64_t d = digest();
	printf("TRACK-ORACLE %s digest: stream %016llx memory at capture %016llx\n", name,
	       (unsigned long long)d, (unsigned long long)C.oracle_digest);
	if (d != C.oracle_digest) {
		if (!keep_going)
			FAIL("%s: the stream's digest differs from memory at the capture point", name);
		printf("TRACK-ORACLE %s digest MISMATCH (going on: figures run)\n", name);
		digest_failed = 1;
	}
	if (oracle) {
		printf("TRACK-ORACLE %s oracle: %llu scan-dirty pages over rounds 2..%d, %llu not in "
		       "the fault set\n", name, (unsigned long long)oracle_total, rounds,
		       (unsigned long long)missing_total);
		if (missing_total)
			FAIL("%s: %llu pages the scan saw change are not in the fault tracker's set",
			     name, (unsigned long long)missing_total);
	}
	if (ioctl(fd, CKPT_IOC_TRACK_STOP))
		FAIL("%s: TRACK_STOP: %s", name, strerror(errno));
	/* The rest of the workload drifts over a run: the untracked rate is taken before and
	 * after the session, and the ratio is to their mean. */
	double after = rate(3.0), mean = (base + after) / 2;
	printf("TRACK-ORACLE %s throughput: %.0f pages/s tracking, without %.0f before / %.0f after, "
	       "ratio %.2f; without this test's own hashing (%.2f s of %.2f s): %.0f pages/s, ratio "
	       "%.2f (reader's system time %.2f s)\n", name, tracked, base, after,
	       mean > 0 ? tracked / mean : 0, u_own, t_end - t0, tracked_nh,
	       mean > 0 ? tracked_nh / mean : 0, s_own);
}

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 6;
	uint64_t snap = argc > 2 ? strtoull(argv[2], NULL, 0) : 16384;
	keep_going = argc > 3 && strcmp(argv[3], "figures") == 0;
	setvbuf(stdout, NULL, _IOLBF, 0);
	fd = open("/dev/checkpoint", O_RDWR);
	if (fd < 0)
		FAIL("open /dev/checkpoint: %s", strerror(errno));
	if (ioctl(fd, CKPT_IOC_GET_FACTS, &F))
		FAIL("GET_FACTS: %s", strerror(errno));
	words = (F.max_pfn + 63) / 64;
	img_hash = calloc(F.max_pfn, 8);
	bm = calloc(words, 8);
	obm = calloc(words, 8);
	cbm = calloc(words, 8);
	bench_count = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (!img_hash || !bm || !obm || !cbm || bench_count == MAP_FAILED)
		FAIL("out of memory");
	pid_t child = fork();
	if (child == 0)
		bench();
	/* The oracle run first (it also checks the digest), then the scan tracker (its digest);
	 * for figures also the fault tracker alone (without the oracle's scans). */
	session("fault+oracle", CKPT_TRACK_FAULT | CKPT_TRACK_ORACLE, rounds, snap);
	session("scan", 0, rounds, snap);
	if (keep_going)
		session("fault", CKPT_TRACK_FAULT, rounds, snap);
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	if (digest_failed)
		FAIL("a digest differed (see above)");
	printf("TRACK-ORACLE PASS\n");
	return 0;
}
