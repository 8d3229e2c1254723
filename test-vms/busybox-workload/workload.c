/* lab-workload: the test guest's load, for migration measurements.
 * Keeps MEM MiB of anonymous memory filled with non-zero data and rewrites RATE MiB of it per
 * second (one word per 4 KiB page, round robin, in 10 ms steps), so pre-copy sees a steady
 * dirty rate. Answers UDP echo on PORT so downtime can be measured from outside.
 *   lab-workload [-m MEM_MIB] [-r RATE_MIB_S] [-p PORT]
 */
#include <arpa/inet.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    double mem_mib = 64, rate_mib = 0;
    int port = 7, opt;
    while ((opt = getopt(argc, argv, "m:r:p:")) != -1) {
        switch (opt) {
        case 'm': mem_mib = atof(optarg); break;
        case 'r': rate_mib = atof(optarg); break;
        case 'p': port = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: lab-workload [-m MEM_MIB] [-r RATE_MIB_S] [-p PORT]\n");
            return 2;
        }
    }
    if (mem_mib < 1 || rate_mib < 0 || port <= 0 || port > 65535) {
        fprintf(stderr, "lab-workload: bad arguments\n");
        return 2;
    }
    size_t pages = (size_t)(mem_mib * 1024 * 1024 / PAGE);
    unsigned char *buf = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (buf == MAP_FAILED) {
        perror("lab-workload: mmap");
        return 1;
    }
    /* Non-zero, page-unique content: no page looks empty to the migration stream. */
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (size_t i = 0; i < pages * PAGE / 8; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        ((uint64_t *)buf)[i] = x;
    }

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY) };
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("lab-workload: udp socket");
        return 1;
    }
    printf("lab-workload: %zu pages (%.0f MiB) filled, dirtying %.1f MiB/s, UDP echo on port %d\n",
           pages, mem_mib, rate_mib, port);
    fflush(stdout);

    const double tick = 0.010;
    double pages_per_tick = rate_mib * 1024 * 1024 / PAGE * tick, credit = 0, next = now();
    size_t cursor = 0;
    uint64_t stamp = 1;
    for (;;) {
        double t = now();
        if (t >= next) {
            /* Catch up at most one second of dirtying after a stall (e.g. while migrating). */
            double ticks = (t - next) / tick + 1;
            if (ticks > 100) ticks = 100;
            credit += pages_per_tick * ticks;
            while (credit >= 1) {
                ((volatile uint64_t *)(buf + cursor * PAGE))[stamp % (PAGE / 8)] = stamp;
                stamp++;
                cursor = (cursor + 1) % pages;
                credit -= 1;
            }
            next += tick * ticks;
        }
        int ms = (int)((next - now()) * 1000) + 1;
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, ms > 0 ? ms : 0) > 0) {
            char msg[2048];
            struct sockaddr_in from;
            socklen_t fl = sizeof from;
            ssize_t n = recvfrom(fd, msg, sizeof msg, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
            if (n > 0) sendto(fd, msg, (size_t)n, 0, (struct sockaddr *)&from, fl);
        }
    }
}
