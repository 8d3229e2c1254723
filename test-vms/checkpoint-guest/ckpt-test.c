// ckpt-test: exercises /dev/checkpoint (docs/checkpoint-abi.md) inside the guest and
// checks the pattern property: a buffer holds pattern P at the capture point and Q after
// it; the checkpoint (last-read content, or the snapshot for pages in the snapshot set)
// must hold P at the buffer's pfns, while live memory holds Q.
// Prints "CKPT-TEST PASS ..." or "CKPT-TEST FAIL: why" and exits 0/1.
// Usage: ckpt-test [PAGES]   (pattern buffer size, default 64)
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint_abi.h" /* generated from checkpoint-abi (the one ABI definition) */

#define PG CKPT_PAGE_SIZE

static int fd;
static struct ckpt_facts F;
static uint8_t *image;      /* what a checkpointd would hold: last content read per pfn */
static uint8_t *have;       /* pfn read at least once */

static pid_t spinner_pid;
#define FAIL(...) do { printf("CKPT-TEST FAIL: " __VA_ARGS__); printf("\n"); \
	if (spinner_pid > 0) { kill(spinner_pid, SIGKILL); } exit(1); } while (0)
#define EXPECT_ERR(call, err, what) do { errno = 0; if ((call) != -1 || errno != (err)) \
	FAIL("%s: expected errno %d, got %d", what, err, errno); } while (0)

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static int test_bit(const uint64_t *bm, uint64_t pfn) { return (bm[pfn / 64] >> (pfn % 64)) & 1; }

/* Reads every pfn whose bit is set (as checkpointd would send them, in runs of up to 256
 * pages) and keeps the content of the pattern pfns, the only ones this test checks. */
static uint64_t *pat_pfns;
static int pat_n;
static uint8_t scratch[256 * PG];

static void keep(uint64_t pfn, const uint8_t *data)
{
	for (int i = 0; i < pat_n; i++)
		if (pat_pfns[i] == pfn) {
			memcpy(image + (size_t)i * PG, data, PG);
			have[i] = 1;
		}
}

static uint64_t read_set(const uint64_t *bm)
{
	uint64_t n = 0, pfn = 0;
	while (pfn < F.max_pfn) {
		if (!test_bit(bm, pfn)) { pfn++; continue; }
		uint64_t run = 1;
		while (run < 256 && pfn + run < F.max_pfn && test_bit(bm, pfn + run))
			run++;
		ssize_t got = pread(fd, scratch, run * PG, pfn * PG);
		if (got != (ssize_t)(run * PG))
			FAIL("pread pfn %llu x%llu: %s", (unsigned long long)pfn, (unsigned long long)run, strerror(errno));
		for (uint64_t k = 0; k < run; k++)
			keep(pfn + k, scratch + k * PG);
		n += run;
		pfn += run;
	}
	return n;
}

static uint64_t pfn_of(int pm, void *va)
{
	uint64_t e;
	if (pread(pm, &e, 8, ((uintptr_t)va / PG) * 8) != 8)
		FAIL("pagemap read");
	if (!(e >> 63))
		FAIL("page not present");
	return e & ((1ULL << 55) - 1);
}

/* A child that counts as fast as it can in shared memory: throttling must slow it. */
static volatile uint64_t *counter;

static pid_t spinner(void)
{
	pid_t c = fork();
	if (c == 0) {
		close(fd);	/* the device must not stay open (module reload after the test) */
		for (;;)
			(*counter)++;
	}
	return c;
}

static uint64_t count_over(double secs)
{
	uint64_t a = *counter;
	double t0 = now();
	while (now() - t0 < secs)
		usleep(10000);
	return *counter - a;
}

/* A capture with a 1-page snapshot buffer must fail with ENOSPC and say how many pages it
 * needed. */
static uint64_t capture_nospace(uint64_t bmbytes, const char *what)
{
	static uint8_t vcpu[CKPT_VCPU_CTX_BYTES];
	uint64_t *snap = calloc(1, bmbytes);
	struct ckpt_capture c = { .max_snapshot_pages = 1, .bitmap = (uintptr_t)snap, .bitmap_bytes = bmbytes,
				  .vcpu = (uintptr_t)vcpu, .vcpu_bytes = sizeof vcpu };
	if (!snap)
		FAIL("out of memory");
	EXPECT_ERR(ioctl(fd, CKPT_IOC_CAPTURE, &c), ENOSPC, what);
	if (c.snapshot_pages < 2)
		FAIL("%s: ENOSPC reports %llu pages needed", what, (unsigned long long)c.snapshot_pages);
	free(snap);
	return c.snapshot_pages;
}

/*
 * The bad cases that need the module (docs/checkpoint-abi.md): a session started twice, the
 * module unloaded while tracking, the snapshot buffer exhausted (clean ENOSPC, the guest runs
 * on, a later capture works), free-page elision (a page allocated after a round is written,
 * hence dirty), throttling (slows a process, ends with the session), bad throttle arguments.
 */
static void bad_cases(uint64_t *bm, uint64_t bmbytes)
{
	struct ckpt_track t = { .flags = CKPT_TRACK_ELIDE_FREE };
	struct ckpt_round r = { .bitmap = (uintptr_t)bm, .bitmap_bytes = bmbytes };

	EXPECT_ERR(ioctl(fd, CKPT_IOC_TRACK_START, &(struct ckpt_track){ .flags = CKPT_TRACK_FAULT | 0x100 }),
		   EINVAL, "unknown track flag");
	if (ioctl(fd, CKPT_IOC_TRACK_START, &t))
		FAIL("TRACK_START(elide free): %s", strerror(errno));
	EXPECT_ERR(ioctl(fd, CKPT_IOC_TRACK_START, &t), EBUSY, "session started twice");

	/* Unloading the module while a session exists is refused; the session goes on. */
	errno = 0;
	if (syscall(SYS_delete_module, "checkpoint", O_NONBLOCK) == 0)
		FAIL("the module unloaded while tracking");
	if (errno != EAGAIN && errno != EBUSY)
		FAIL("delete_module while tracking: %s", strerror(errno));
	printf("bad case: unload while tracking refused (%s)\n", strerror(errno));

	/* Free-page elision: the first round leaves free pages out. */
	memset(bm, 0, bmbytes);
	if (ioctl(fd, CKPT_IOC_NEXT_ROUND, &r))
		FAIL("NEXT_ROUND (elide): %s", strerror(errno));
	if (r.free == 0 || r.dirty + r.free > F.max_pfn)
		FAIL("free-page elision: dirty %llu free %llu", (unsigned long long)r.dirty, (unsigned long long)r.free);
	printf("round 1 with free-page elision: dirty %llu free %llu unreadable %llu\n",
	       (unsigned long long)r.dirty, (unsigned long long)r.free, (unsigned long long)r.unreadable);
	read_set(bm);
	/* Pages allocated now come off the free lists: once written they must be dirty. */
	int n = 256;
	uint8_t *fresh = mmap(NULL, (size_t)n * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (fresh == MAP_FAILED)
		FAIL("mmap fresh");
	for (int i = 0; i < n; i++)
		memset(fresh + (size_t)i * PG, 0x5a, PG);
	int pm = open("/proc/self/pagemap", O_RDONLY);
	memset(bm, 0, bmbytes);
	if (ioctl(fd, CKPT_IOC_NEXT_ROUND, &r))
		FAIL("NEXT_ROUND 2 (elide): %s", strerror(errno));
	for (int i = 0; i < n; i++) {
		uint64_t pfn = pfn_of(pm, fresh + (size_t)i * PG);
		if (!test_bit(bm, pfn))
			FAIL("a freshly allocated, written page (pfn %llu) is not dirty", (unsigned long long)pfn);
	}
	close(pm);
	munmap(fresh, (size_t)n * PG);
	printf("bad case: %d pages allocated after a round and written are all dirty\n", n);

	/* Snapshot exhausted: ENOSPC, nothing held, the guest runs on, the session too. */
	uint64_t needed = capture_nospace(bmbytes, "capture with a 1-page snapshot buffer");
	struct ckpt_facts f2;
	if (ioctl(fd, CKPT_IOC_GET_FACTS, &f2) || f2.state != CKPT_STATE_SESSION)
		FAIL("after ENOSPC: state %u", f2.state);
	memset(bm, 0, bmbytes);
	if (ioctl(fd, CKPT_IOC_NEXT_ROUND, &r))
		FAIL("round after ENOSPC: %s", strerror(errno));
	printf("bad case: snapshot exhausted -> ENOSPC (needed %llu), session goes on\n",
	       (unsigned long long)needed);

	/* Throttling: a spinning child is slowed, then released; bad arguments refused. */
	counter = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (counter == MAP_FAILED)
		FAIL("mmap counter");
	pid_t child = spinner();
	if (child < 0)
		FAIL("fork");
	spinner_pid = child;
	uint64_t free_run = count_over(0.5);
	struct ckpt_throttle th = { .pid = child, .flags = CKPT_THROTTLE_SET, .stop_ms = 180, .period_ms = 200 };
	if (ioctl(fd, CKPT_IOC_THROTTLE, &th))
		FAIL("THROTTLE: %s", strerror(errno));
	uint64_t slowed = count_over(0.5);
	struct ckpt_throttle rel = { .pid = child };
	if (ioctl(fd, CKPT_IOC_THROTTLE, &rel))
		FAIL("THROTTLE release: %s", strerror(errno));
	printf("throttle: spinner counted %llu in 0.5 s free, %llu at 90%% stopped; stopped %.0f ms\n",
	       (unsigned long long)free_run, (unsigned long long)slowed, rel.stopped_ns / 1e6);
	if (slowed * 2 > free_run || rel.stopped_ns < 200000000ULL)
		FAIL("throttling did not slow the process");
	rel.stopped_ns = 0;
	EXPECT_ERR(ioctl(fd, CKPT_IOC_THROTTLE, &rel), ESRCH, "release of a process not throttled");
	th.stop_ms = 200;
	EXPECT_ERR(ioctl(fd, CKPT_IOC_THROTTLE, &th), EINVAL, "stop_ms >= period_ms");
	th.stop_ms = 5; th.period_ms = 5;
	EXPECT_ERR(ioctl(fd, CKPT_IOC_THROTTLE, &th), EINVAL, "period below 10 ms");
	th = (struct ckpt_throttle){ .pid = 999999, .flags = CKPT_THROTTLE_SET, .stop_ms = 10, .period_ms = 100 };
	EXPECT_ERR(ioctl(fd, CKPT_IOC_THROTTLE, &th), ESRCH, "throttle of no process");
	int fd3 = open("/dev/checkpoint", O_RDWR);
	th.pid = child;
	EXPECT_ERR(ioctl(fd3, CKPT_IOC_THROTTLE, &th), EBUSY, "throttle from a non-owner");
	close(fd3);
	/* The session's end lets a throttled process run: stop it almost all the time, end the
	 * session, it must count freely again. */
	th = (struct ckpt_throttle){ .pid = child, .flags = CKPT_THROTTLE_SET, .stop_ms = 990, .period_ms = 1000 };
	if (ioctl(fd, CKPT_IOC_THROTTLE, &th))
		FAIL("THROTTLE 99%%: %s", strerror(errno));
	usleep(100000);
	if (ioctl(fd, CKPT_IOC_TRACK_STOP))
		FAIL("TRACK_STOP (elide): %s", strerror(errno));
	uint64_t after = count_over(0.5);
	if (after * 2 < free_run)
		FAIL("a throttled process stays slow after the session ended (%llu vs %llu)",
		     (unsigned long long)after, (unsigned long long)free_run);
	printf("bad case: session end released the throttled process (%llu in 0.5 s)\n", (unsigned long long)after);
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	spinner_pid = 0;
}

/*
 * The fault tracker out of snapshot space in the capture pause: ENOSPC with the pages the
 * capture needed, and tracking goes on. The next round reports the void capture's final set
 * and what was written since, not every page again (which would send all of RAM anew and
 * could never fit the budget that just ran out).
 */
static void fault_nospace(uint64_t *bm, uint64_t bmbytes)
{
	struct ckpt_track t = { .flags = CKPT_TRACK_FAULT | CKPT_TRACK_ELIDE_FREE };
	struct ckpt_round r = { .bitmap = (uintptr_t)bm, .bitmap_bytes = bmbytes };
	uint64_t all = 0, last = 0;

	if (ioctl(fd, CKPT_IOC_TRACK_START, &t))
		FAIL("TRACK_START(fault): %s", strerror(errno));
	for (int k = 0; k < 3; k++) {
		memset(bm, 0, bmbytes);
		r = (struct ckpt_round){ .bitmap = (uintptr_t)bm, .bitmap_bytes = bmbytes };
		if (ioctl(fd, CKPT_IOC_NEXT_ROUND, &r))
			FAIL("NEXT_ROUND (fault) %d: %s", k, strerror(errno));
		if (k == 0)
			all = r.dirty;
		last = r.dirty;
		read_set(bm);
	}
	uint64_t needed = capture_nospace(bmbytes, "fault tracker capture with a 1-page snapshot buffer");
	memset(bm, 0, bmbytes);
	r = (struct ckpt_round){ .bitmap = (uintptr_t)bm, .bitmap_bytes = bmbytes };
	if (ioctl(fd, CKPT_IOC_NEXT_ROUND, &r))
		FAIL("round after the fault tracker's ENOSPC: %s", strerror(errno));
	printf("bad case: fault tracker snapshot exhausted -> ENOSPC (needed %llu); rounds %llu, %llu, after it %llu\n",
	       (unsigned long long)needed, (unsigned long long)all, (unsigned long long)last,
	       (unsigned long long)r.dirty);
	if (r.dirty * 2 > all)
		FAIL("after ENOSPC the fault tracker reported %llu of %llu pages: it started over",
		     (unsigned long long)r.dirty, (unsigned long long)all);
	if (ioctl(fd, CKPT_IOC_TRACK_STOP))
		FAIL("TRACK_STOP (fault): %s", strerror(errno));
}

int main(int argc, char **argv)
{
	int npages = argc > 1 ? atoi(argv[1]) : 64;
	if (npages < 2 || npages > 65536)
		FAIL("bad page count");
	fd = open("/dev/checkpoint", O_RDWR);
	if (fd < 0)
		FAIL("open /dev/checkpoint: %s", strerror(errno));
	if (ioctl(fd, CKPT_IOC_GET_FACTS, &F))
		FAIL("GET_FACTS: %s", strerror(errno));
	printf("facts: abi %u page %u max_pfn %llu nr_pages %llu start_info pfn %llu mfn %#llx "
	       "store_mfn %#llx console_mfn %#llx cpus %u p2m_frames %llu\n",
	       F.abi_version, F.page_size, (unsigned long long)F.max_pfn,
	       (unsigned long long)F.nr_pages, (unsigned long long)F.start_info_pfn,
	       (unsigned long long)F.start_info_mfn, (unsigned long long)F.store_mfn,
	       (unsigned long long)F.console_mfn, F.online_cpus,
	       (unsigned long long)F.p2m_frames);
	if (F.abi_version != CKPT_ABI_VERSION || F.page_size != PG || F.max_pfn < F.nr_pages || F.nr_pages == 0)
		FAIL("implausible facts");

	/* Misuse: every case returns an errno. */
	char buf[PG];
	struct ckpt_round r = {0};
	struct ckpt_track t = {0};
	struct ckpt_table tb = {0};
	uint64_t bmbytes = (F.max_pfn + 63) / 64 * 8;
	uint64_t *bm = calloc(1, bmbytes);
	image = calloc(npages, PG);
	have = calloc(npages, 1);
	if (!bm || !image || !have)
		FAIL("out of memory");
	EXPECT_ERR(ioctl(fd, CKPT_IOC(3, 99, 8), buf), ENOTTY, "unknown ioctl");
	r.bitmap = (uintptr_t)bm; r.bitmap_bytes = bmbytes;
	EXPECT_ERR(ioctl(fd, CKPT_IOC_NEXT_ROUND, &r), EINVAL, "round without session");
	EXPECT_ERR(ioctl(fd, CKPT_IOC_TRACK_STOP), EINVAL, "stop without session");
	EXPECT_ERR(pread(fd, buf, PG, 100), EINVAL, "unaligned pread");
	EXPECT_ERR(pread(fd, buf, 100, 0), EINVAL, "short pread");
	EXPECT_ERR(ioctl(fd, CKPT_IOC_GET_FACTS, (void *)16), EFAULT, "bad pointer");
	tb.table = CKPT_TABLE_PAGE_TYPES; tb.count = 1; tb.buf = (uintptr_t)buf; tb.buf_bytes = 1;
	EXPECT_ERR(ioctl(fd, CKPT_IOC_READ_TABLE, &tb), ENODATA, "types before capture");
	tb.table = 77;
	EXPECT_ERR(ioctl(fd, CKPT_IOC_READ_TABLE, &tb), EINVAL, "unknown table");
	t.flags = 0x80;
	EXPECT_ERR(ioctl(fd, CKPT_IOC_TRACK_START, &t), EINVAL, "track flags");
	struct ckpt_throttle th = { .pid = getpid(), .flags = CKPT_THROTTLE_SET, .stop_ms = 10, .period_ms = 100 };
	EXPECT_ERR(ioctl(fd, CKPT_IOC_THROTTLE, &th), EINVAL, "throttle without session");
	if (pread(fd, buf, PG, F.max_pfn * PG) != 0)
		FAIL("read at max_pfn should be EOF");

	/* Live p2m: the start_info pfn maps to its mfn. */
	uint64_t e = 0;
	tb = (struct ckpt_table){ .table = CKPT_TABLE_P2M, .start = F.start_info_pfn, .count = 1, .buf = (uintptr_t)&e, .buf_bytes = 8 };
	if (ioctl(fd, CKPT_IOC_READ_TABLE, &tb) || tb.returned != 1 || e != F.start_info_mfn)
		FAIL("p2m of start_info: %llx vs %llx", (unsigned long long)e, (unsigned long long)F.start_info_mfn);

	/* The pattern buffer: early half gets P now (sent in pre-copy), late half gets P just
	 * before the capture (so it must come from the snapshot). */
	uint8_t *pat = mmap(NULL, (size_t)npages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (pat == MAP_FAILED || mlock(pat, (size_t)npages * PG))
		FAIL("mmap/mlock pattern buffer");
	int half = npages / 2;
	for (int i = 0; i < npages; i++)
		memset(pat + (size_t)i * PG, i < half ? 'P' : 'x', PG);
	int pm = open("/proc/self/pagemap", O_RDONLY);
	if (pm < 0)
		FAIL("open pagemap");
	uint64_t *pfns = calloc(npages, 8);
	pat_pfns = pfns;
	pat_n = npages;
	for (int i = 0; i < npages; i++) {
		pfns[i] = pfn_of(pm, pat + (size_t)i * PG);
		if (pfns[i] == 0 || pfns[i] >= F.max_pfn)
			FAIL("pagemap gave pfn %llu (need root)", (unsigned long long)pfns[i]);
	}

	bad_cases(bm, bmbytes);
	fault_nospace(bm, bmbytes);

	t.flags = 0;
	if (ioctl(fd, CKPT_IOC_TRACK_START, &t))
		FAIL("TRACK_START: %s", strerror(errno));
	EXPECT_ERR(ioctl(fd, CKPT_IOC_TRACK_START, &t), EBUSY, "second session");
	int fd2 = open("/dev/checkpoint", O_RDWR);
	EXPECT_ERR(ioctl(fd2, CKPT_IOC_NEXT_ROUND, &r), EBUSY, "round from non-owner");
	EXPECT_ERR(ioctl(fd2, CKPT_IOC_TRACK_START, &t), EBUSY, "session started twice (other file)");
	close(fd2);
	r.bitmap_bytes = 8;
	EXPECT_ERR(ioctl(fd, CKPT_IOC_NEXT_ROUND, &r), EINVAL, "small bitmap");
	r.bitmap_bytes = bmbytes;

	/* Pre-copy rounds. */
	uint64_t last_dirty = 0;
	for (int k = 1; k <= 3; k++) {
		memset(bm, 0, bmbytes);
		double t0 = now();
		if (ioctl(fd, CKPT_IOC_NEXT_ROUND, &r))
			FAIL("NEXT_ROUND: %s", strerror(errno));
		uint64_t n = read_set(bm);
		printf("round %llu: dirty %llu scanned %llu scan %.1f ms, read %llu pages in %.1f ms\n",
		       (unsigned long long)r.round, (unsigned long long)r.dirty,
		       (unsigned long long)r.scanned, r.scan_ns / 1e6, (unsigned long long)n,
		       (now() - t0) * 1e3);
		if (k == 1 && r.dirty < F.nr_pages / 4)
			FAIL("first round must report every RAM page (got %llu)", (unsigned long long)r.dirty);
		if (k == 2) {
			/* A page written after its read is dirty again; one not written stays clean. */
			memset(pat, 'P', PG);   /* same content: not dirty */
			pat[PG] = 'Z';          /* page 1 changed */
		}
		if (k == 3) {
			if (!test_bit(bm, pfns[1]))
				FAIL("page written after its read not reported dirty");
			if (test_bit(bm, pfns[0]))
				FAIL("page rewritten with identical content reported dirty");
		}
		last_dirty = r.dirty;
	}
	pat[PG] = 'P';
	for (int i = half; i < npages; i++)
		memset(pat + (size_t)i * PG, 'P', PG);

	/* The capture. */
	static uint8_t vcpu[CKPT_VCPU_CTX_BYTES];
	uint64_t *snapset = calloc(1, bmbytes);
	struct ckpt_capture c = { .max_snapshot_pages = last_dirty * 4 + 4096, .bitmap = (uintptr_t)snapset,
			     .bitmap_bytes = bmbytes, .vcpu = (uintptr_t)vcpu, .vcpu_bytes = sizeof vcpu };
	if (c.max_snapshot_pages > F.max_pfn)
		c.max_snapshot_pages = F.max_pfn;
	double t0 = now();
	if (ioctl(fd, CKPT_IOC_CAPTURE, &c))
		FAIL("CAPTURE: %s (snapshot_pages %llu)", strerror(errno), (unsigned long long)c.snapshot_pages);
	double tc = now() - t0;
	if (c.result == 0) {
		printf("CKPT-TEST RESUMED: this is a revived copy of the guest\n");
		return 0;
	}
	/* Q after the capture point. */
	for (int i = 0; i < npages; i++)
		memset(pat + (size_t)i * PG, 'Q', PG);
	printf("capture: result %llu snapshot %llu pages, pause %.2f ms, suspend sequence %.1f ms, "
	       "ioctl %.1f ms, page tables %llu, scanned %llu\n",
	       (unsigned long long)c.result, (unsigned long long)c.snapshot_pages, c.pause_ns / 1e6,
	       c.suspend_ns / 1e6, tc * 1e3, (unsigned long long)c.pt_pages, (unsigned long long)c.scanned);

	/* Final phase as checkpointd does it: read exactly the snapshot set. */
	uint64_t n = read_set(snapset);
	if (n != c.snapshot_pages)
		FAIL("snapshot set has %llu bits, capture said %llu", (unsigned long long)n, (unsigned long long)c.snapshot_pages);
	for (int i = 0; i < npages; i++) {
		uint8_t *img = image + (size_t)i * PG;
		if (!have[i])
			FAIL("pattern pfn %llu never sent", (unsigned long long)pfns[i]);
		for (int j = 0; j < PG; j++)
			if (img[j] != 'P')
				FAIL("checkpoint has %#x not P at page %d (pfn %llu, in snapshot %d)", img[j], i,
				     (unsigned long long)pfns[i], test_bit(snapset, pfns[i]));
		if (i >= half && !test_bit(snapset, pfns[i]))
			FAIL("late-written page %d not in the snapshot set", i);
		if (pat[(size_t)i * PG] != 'Q')
			FAIL("live buffer lost Q");
	}

	/* vCPU context sanity (Xen's vcpu_guest_context layout). */
	uint64_t flags, rip, rsp, rdx, cr3, gdt0, ksp, evcb;
	memcpy(&flags, vcpu + CKPT_VCPU_FLAGS, 8);
	memcpy(&rdx, vcpu + CKPT_VCPU_RDX, 8);
	memcpy(&rip, vcpu + CKPT_VCPU_RIP, 8);
	memcpy(&rsp, vcpu + CKPT_VCPU_RSP, 8);
	memcpy(&gdt0, vcpu + CKPT_VCPU_GDT_FRAMES, 8);
	memcpy(&ksp, vcpu + CKPT_VCPU_KERNEL_SP, 8);
	memcpy(&cr3, vcpu + CKPT_VCPU_CR3, 8);
	memcpy(&evcb, vcpu + CKPT_VCPU_EVENT_CALLBACK_EIP, 8);
	printf("vcpu: flags %#llx rip %#llx rsp %#llx rdx %#llx cr3 %#llx gdt0 %#llx kernel_sp %#llx event_cb %#llx\n",
	       (unsigned long long)flags, (unsigned long long)rip, (unsigned long long)rsp,
	       (unsigned long long)rdx, (unsigned long long)cr3, (unsigned long long)gdt0,
	       (unsigned long long)ksp, (unsigned long long)evcb);
	if (rdx != F.start_info_mfn || rip < 0xffff800000000000ULL || rsp < 0xffff800000000000ULL ||
	    !cr3 || !gdt0 || !evcb || !(flags & 4))
		FAIL("implausible vcpu context");

	/* Captured tables. */
	uint8_t *types = malloc(F.max_pfn);
	tb = (struct ckpt_table){ .table = CKPT_TABLE_PAGE_TYPES, .count = F.max_pfn, .buf = (uintptr_t)types, .buf_bytes = F.max_pfn };
	if (ioctl(fd, CKPT_IOC_READ_TABLE, &tb) || tb.returned != F.max_pfn)
		FAIL("page types: %s", strerror(errno));
	uint64_t lv[5] = {0}, pinned = 0, notram = 0;
	for (uint64_t p = 0; p < F.max_pfn; p++) {
		if (types[p] == CKPT_PT_NOT_RAM) { notram++; continue; }
		if ((types[p] & CKPT_PT_LEVEL_MASK) >= 1 && (types[p] & CKPT_PT_LEVEL_MASK) <= 4)
			lv[types[p] & CKPT_PT_LEVEL_MASK]++;
		if (types[p] & CKPT_PT_PINNED)
			pinned++;
	}
	printf("page types: L1 %llu L2 %llu L3 %llu L4 %llu pinned %llu not-RAM %llu\n",
	       (unsigned long long)lv[1], (unsigned long long)lv[2], (unsigned long long)lv[3],
	       (unsigned long long)lv[4], (unsigned long long)pinned, (unsigned long long)notram);
	if ((cr3 >> 12) == 0 || lv[4] < 2 || lv[1] < 1 || !pinned)
		FAIL("implausible page-type map");
	uint64_t *cp2m = malloc(F.max_pfn * 8);
	tb = (struct ckpt_table){ .table = CKPT_TABLE_P2M_CAPTURED, .count = F.max_pfn, .buf = (uintptr_t)cp2m, .buf_bytes = F.max_pfn * 8 };
	if (ioctl(fd, CKPT_IOC_READ_TABLE, &tb))
		FAIL("captured p2m: %s", strerror(errno));
	int found_cr3 = 0;
	for (uint64_t p = 0; p < F.max_pfn; p++)
		if (cp2m[p] == (cr3 >> 12)) {
			found_cr3 = 1;
			if ((types[p] & CKPT_PT_LEVEL_MASK) != 4)
				FAIL("cr3's pfn %llu is not typed L4 (%#x)", (unsigned long long)p, types[p]);
		}
	if (!found_cr3)
		FAIL("cr3 mfn not in the captured p2m");
	uint64_t nfr = F.p2m_frames, *frames = malloc(nfr * 8);
	tb = (struct ckpt_table){ .table = CKPT_TABLE_P2M_FRAMES, .count = nfr, .buf = (uintptr_t)frames, .buf_bytes = nfr * 8 };
	if (ioctl(fd, CKPT_IOC_READ_TABLE, &tb) || tb.returned != nfr)
		FAIL("p2m frames: %s", strerror(errno));
	for (uint64_t i = 0; i < nfr; i++)
		if (frames[i] >= F.max_pfn)
			FAIL("p2m frame %llu out of range", (unsigned long long)i);

	if (ioctl(fd, CKPT_IOC_TRACK_STOP))
		FAIL("TRACK_STOP: %s", strerror(errno));
	EXPECT_ERR(ioctl(fd, CKPT_IOC_READ_TABLE, &tb), ENODATA, "tables after stop");
	printf("CKPT-TEST PASS pages=%d snapshot=%llu pause_ms=%.2f suspend_ms=%.1f pt_pages=%llu\n",
	       npages, (unsigned long long)c.snapshot_pages, c.pause_ns / 1e6, c.suspend_ns / 1e6,
	       (unsigned long long)c.pt_pages);
	return 0;
}
