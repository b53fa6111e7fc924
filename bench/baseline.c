// The baseline: the best a plain C program does for vfio-powerd's job on this machine.
// epoll over N eventfds; on each event read the counter and call a no-op "re-arm" (noinline,
// through a function pointer, so it is not optimised away). Same thread layout, injection,
// clock and measurements as the daemon side (bench/Sources/vfio-powerd-bench/main.swift):
// the main thread injects (writes an eventfd), a loop thread handles; a sample ends when the
// re-arm is called; all times CLOCK_MONOTONIC.
//
//   baseline --devices N --out FILE.json [--samples K] [--warmup W] [--gap-us G]
//            [--rounds R] [--round-gap-us G] [--idle-seconds S]
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static int n = 64, samples = 10000, warmup = 500, gap_us = 200, rounds = 0, round_gap_us = 2000;
static double idle_seconds = 30;
static const char *out = "-";

static int epfd;
static int *efds;
static _Atomic long arm_count;
static _Atomic int64_t last_arm;
static _Atomic uint64_t handled;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000}, left;
    while (nanosleep(&ts, &left) != 0 && errno == EINTR) ts = left;
}

// The no-op re-arm: what the daemon's arm ioctl is to the simulated device (its observer
// records the same two things).
__attribute__((noinline)) static void rearm(int device) {
    (void)device;
    atomic_store_explicit(&last_arm, now_ns(), memory_order_release);
    atomic_fetch_add_explicit(&arm_count, 1, memory_order_release);
}
static void (*volatile rearm_fn)(int) = rearm;

static void *loop(void *arg) {
    (void)arg;
    struct epoll_event events[64];
    for (;;) {
        int k = epoll_wait(epfd, events, 64, -1);
        if (k < 0) { if (errno == EINTR) continue; perror("epoll_wait"); exit(1); }
        for (int i = 0; i < k; i++) {
            int device = (int)events[i].data.u32;
            if (device < 0 || device >= n) return NULL;
            uint64_t count;
            if (read(efds[device], &count, sizeof count) == sizeof count && count > 0) {
                atomic_fetch_add_explicit(&handled, count, memory_order_relaxed);
                rearm_fn(device);
            }
        }
    }
}

struct usage { int64_t user, sys, vol, invol; };
static struct usage get_usage(int who) {
    struct rusage r;
    getrusage(who, &r);
    return (struct usage){(int64_t)r.ru_utime.tv_sec * 1000000 + r.ru_utime.tv_usec,
                          (int64_t)r.ru_stime.tv_sec * 1000000 + r.ru_stime.tv_usec, r.ru_nvcsw, r.ru_nivcsw};
}
static struct usage usage_sub(struct usage a, struct usage b) {
    return (struct usage){a.user - b.user, a.sys - b.sys, a.vol - b.vol, a.invol - b.invol};
}

static int wait_for_arms(long target, int64_t timeout_ns) {
    int64_t deadline = now_ns() + timeout_ns;
    while (atomic_load_explicit(&arm_count, memory_order_acquire) < target) {
        if (now_ns() > deadline) return 0;
        sleep_us(5);
    }
    return 1;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void percentiles(FILE *f, const char *name, double *v, int count, const char *indent) {
    qsort(v, count, sizeof *v, cmp_double);
    double sum = 0;
    for (int i = 0; i < count; i++) sum += v[i];
    int i50 = (int)((0.5 * count) + 0.999999999) - 1, i90 = (int)((0.9 * count) + 0.999999999) - 1;
    int i99 = (int)((0.99 * count) + 0.999999999) - 1, i999 = (int)((0.999 * count) + 0.999999999) - 1;
    if (i999 >= count) i999 = count - 1;
    fprintf(f, "%s\"%s\": {\"count\": %d, \"min\": %.3f, \"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"p999\": %.3f, \"max\": %.3f, \"mean\": %.3f}",
            indent, name, count, v[0], v[i50], v[i90], v[i99], v[i999], v[count - 1], sum / count);
}

int main(int argc, char **argv) {
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *flag = argv[i], *value = argv[i + 1];
        if (!strcmp(flag, "--devices")) n = atoi(value);
        else if (!strcmp(flag, "--samples")) samples = atoi(value);
        else if (!strcmp(flag, "--warmup")) warmup = atoi(value);
        else if (!strcmp(flag, "--gap-us")) gap_us = atoi(value);
        else if (!strcmp(flag, "--rounds")) rounds = atoi(value);
        else if (!strcmp(flag, "--round-gap-us")) round_gap_us = atoi(value);
        else if (!strcmp(flag, "--idle-seconds")) idle_seconds = atof(value);
        else if (!strcmp(flag, "--out")) out = value;
        else if (!strcmp(flag, "--watchdog-usec")) { /* the baseline has no watchdog */ }
        else { fprintf(stderr, "unknown option %s\n", flag); return 2; }
    }
    if (rounds == 0) { rounds = 40000 / n; if (rounds > 2000) rounds = 2000; if (rounds < 10) rounds = 10; }

    // Startup: every eventfd created and watched, the loop thread running ("armed").
    int64_t t_start = now_ns();
    efds = calloc(n, sizeof *efds);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < n; i++) {
        efds[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (efds[i] < 0) { perror("eventfd"); return 1; }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, efds[i], &ev) != 0) { perror("epoll_ctl"); return 1; }
        rearm_fn(i);  // the initial arm of every device, as the daemon's start does
    }
    pthread_t thread;
    pthread_create(&thread, NULL, loop, NULL);
    double startup_ms = (now_ns() - t_start) / 1e6;
    struct rusage r0;
    getrusage(RUSAGE_SELF, &r0);
    long rss_after_start = r0.ru_maxrss;

    // Idle: N eventfds watched, no events.
    sleep_us(500000);
    struct usage p0 = get_usage(RUSAGE_SELF), m0 = get_usage(RUSAGE_THREAD);
    sleep_us((long)(idle_seconds * 1e6));
    struct usage p1 = get_usage(RUSAGE_SELF), m1 = get_usage(RUSAGE_THREAD);
    struct usage idle_process = usage_sub(p1, p0);
    struct usage idle_loop = usage_sub(idle_process, usage_sub(m1, m0));

    // Latency: one wake at a time, round-robin over the N eventfds (same gap rule as the daemon).
    prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0);
    int gap = n == 1 ? (gap_us > 1200 ? gap_us : 1200) : gap_us;
    double *lat = malloc(sizeof(double) * samples);
    uint64_t one = 1;
    for (int i = 0; i < warmup + samples; i++) {
        int device = i % n;
        long target = atomic_load(&arm_count) + 1;
        int64_t t0 = now_ns();
        if (write(efds[device], &one, sizeof one) != sizeof one) { perror("write"); return 1; }
        if (!wait_for_arms(target, 10000000000LL)) { fprintf(stderr, "no re-arm (sample %d)\n", i); return 1; }
        int64_t t1 = atomic_load(&last_arm);
        if (i >= warmup) lat[i - warmup] = (t1 - t0) / 1e3;
        sleep_us(gap);
    }

    // Storm: all N woken at once, repeatedly.
    double *drains = malloc(sizeof(double) * rounds);
    long injected = 0, lost = 0, done_rounds = 0;
    int64_t total_drain = 0;
    uint64_t handled0 = atomic_load(&handled);
    long arms0 = atomic_load(&arm_count);
    for (int r = 0; r < rounds; r++) {
        long target = atomic_load(&arm_count) + n;
        int64_t t0 = now_ns();
        for (int i = 0; i < n; i++) write(efds[i], &one, sizeof one);
        injected += n;
        if (!wait_for_arms(target, 60000000000LL)) { lost += target - atomic_load(&arm_count); break; }
        int64_t t1 = atomic_load(&last_arm);
        drains[done_rounds++] = (t1 - t0) / 1e6;
        total_drain += t1 - t0;
        sleep_us(round_gap_us);
    }
    uint64_t handled_storm = atomic_load(&handled) - handled0;
    long rearms = atomic_load(&arm_count) - arms0;
    lost += injected - (long)handled_storm;

    struct rusage r1;
    getrusage(RUSAGE_SELF, &r1);

    FILE *f = strcmp(out, "-") ? fopen(out, "w") : stdout;
    if (!f) { perror(out); return 1; }
    fprintf(f, "{\n  \"side\": \"baseline\",\n  \"devices\": %d,\n  \"startupMilliseconds\": %.6f,\n", n, startup_ms);
    percentiles(f, "latencyMicroseconds", lat, samples, "  ");
    fprintf(f, ",\n  \"latencyGapMicroseconds\": %d,\n", gap);
    fprintf(f, "  \"storm\": {\"rounds\": %ld, \"injected\": %ld, \"handledByDaemon\": %llu, \"rearms\": %ld, \"lost\": %ld, "
               "\"wakesPerSecond\": %.3f, \"roundGapMicroseconds\": %d,\n",
            done_rounds, injected, (unsigned long long)handled_storm, rearms, lost,
            injected / (total_drain / 1e9), round_gap_us);
    percentiles(f, "drainMilliseconds", drains, (int)done_rounds, "    ");
    fprintf(f, "},\n");
    double cpu_pct = (idle_loop.user + idle_loop.sys) / (idle_seconds * 1e6) * 100;
    fprintf(f, "  \"idle\": {\"seconds\": %g, \"watchdogUsec\": 0, \"watchdogPings\": 0, \"cpuPercentOfCore\": %.6f,\n"
               "    \"process\": {\"userUsec\": %lld, \"systemUsec\": %lld, \"voluntary\": %lld, \"involuntary\": %lld},\n"
               "    \"daemonThreads\": {\"userUsec\": %lld, \"systemUsec\": %lld, \"voluntary\": %lld, \"involuntary\": %lld}},\n",
            idle_seconds, cpu_pct,
            (long long)idle_process.user, (long long)idle_process.sys, (long long)idle_process.vol, (long long)idle_process.invol,
            (long long)idle_loop.user, (long long)idle_loop.sys, (long long)idle_loop.vol, (long long)idle_loop.invol);
    fprintf(f, "  \"rssAfterStartKilobytes\": %ld,\n  \"maxRSSKilobytes\": %ld\n}\n", rss_after_start, r1.ru_maxrss);
    if (f != stdout) fclose(f);
    return 0;
}
