/* lab-probe: measures a guest's reachability from outside, for downtime figures.
 * Sends a UDP datagram to an echo service every INTERVAL ms and records when echoes come
 * back. Downtime is the longest gap between two consecutive echoes. Runs until SIGTERM or
 * SIGINT (or -d seconds), then prints one JSON object.
 *   lab-probe -t IP [-p PORT] [-i MS] [-d SECONDS] [-o FILE]
 *   lab-probe -t IP [-p PORT] -w SECONDS    wait for the first echo (exit 0) or time out (1)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x4c414250u /* "LABP" */

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void usage(void)
{
    fprintf(stderr, "usage: lab-probe -t IP [-p PORT] [-i MS] [-d SECONDS] [-o FILE] | -w SECONDS\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *target = NULL, *outfile = NULL;
    int port = 7, opt;
    double interval = 0.010, duration = 0, wait_s = 0;
    while ((opt = getopt(argc, argv, "t:p:i:d:o:w:")) != -1) {
        switch (opt) {
        case 't': target = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'i': interval = atof(optarg) / 1000.0; break;
        case 'd': duration = atof(optarg); break;
        case 'o': outfile = optarg; break;
        case 'w': wait_s = atof(optarg); break;
        default: usage();
        }
    }
    if (!target || port <= 0 || port > 65535 || interval <= 0) usage();
    struct sockaddr_in dst = { .sin_family = AF_INET, .sin_port = htons(port) };
    if (inet_pton(AF_INET, target, &dst.sin_addr) != 1) {
        fprintf(stderr, "lab-probe: bad IPv4 address: %s\n", target);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0) {
        perror("lab-probe: socket");
        return 2;
    }
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);

    double t0 = now(), next = t0, first_rx = -1, last_rx = -1, max_gap = 0, gap_at = -1;
    unsigned long sent = 0, received = 0;
    uint32_t seq = 0;
    while (!stop) {
        double t = now();
        if (duration > 0 && t - t0 >= duration) break;
        if (wait_s > 0 && t - t0 >= wait_s) {
            fprintf(stderr, "lab-probe: no echo from %s:%d within %.0f s\n", target, port, wait_s);
            return 1;
        }
        if (t >= next) {
            uint32_t pkt[2] = { htonl(MAGIC), htonl(seq++) };
            /* ECONNREFUSED/EHOSTUNREACH while the guest moves are expected: keep probing. */
            if (send(fd, pkt, sizeof pkt, 0) == sizeof pkt) sent++;
            next += interval;
            if (next < t) next = t + interval; /* we were descheduled: do not burst */
        }
        /* Round up: a zero timeout would spin through the last millisecond, and spinning is
         * expensive in an emulated dom0 (it slowed migrations down). */
        int ms = (int)ceil((next - now()) * 1000.0);
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, ms > 0 ? ms : 0) > 0) {
            uint32_t pkt[2];
            ssize_t n;
            while ((n = recv(fd, pkt, sizeof pkt, 0)) >= 0 || errno == ECONNREFUSED) {
                if (n != sizeof pkt || ntohl(pkt[0]) != MAGIC) continue;
                double r = now();
                received++;
                if (wait_s > 0) {
                    printf("echo after %.3f s\n", r - t0);
                    return 0;
                }
                if (last_rx >= 0 && r - last_rx > max_gap) {
                    max_gap = r - last_rx;
                    gap_at = last_rx - t0;
                }
                if (first_rx < 0) first_rx = r - t0;
                last_rx = r;
            }
        }
    }
    FILE *out = outfile ? fopen(outfile, "w") : stdout;
    if (!out) {
        perror("lab-probe: output");
        return 2;
    }
    fprintf(out,
            "{\"target\":\"%s\",\"port\":%d,\"interval_ms\":%.1f,\"duration_s\":%.3f,"
            "\"sent\":%lu,\"received\":%lu,\"first_echo_s\":%.3f,\"last_echo_s\":%.3f,"
            "\"max_gap_ms\":%.1f,\"max_gap_start_s\":%.3f}\n",
            target, port, interval * 1000, now() - t0, sent, received, first_rx,
            last_rx < 0 ? -1.0 : last_rx - t0, max_gap * 1000, gap_at);
    if (out != stdout) fclose(out);
    return received > 0 ? 0 : 1;
}
