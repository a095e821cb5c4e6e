/*
 * counter.c - sends TELEMETRY_COUNT readings of sensor `example/counter` (kind counter,
 * values 1..N, one per millisecond of device time starting now) and waits until the
 * collector has ACKed every one, then prints one summary line:
 *
 *   sent 1000 readings: 1000 accepted, 0 duplicate, 0 rejected
 *
 * Environment: TELEMETRY_ADDRESS (host:port, default 127.0.0.1:7878), TELEMETRY_DEVICE,
 * TELEMETRY_TOKEN (from `telemetry devices add`), TELEMETRY_COUNT (default 1000),
 * TELEMETRY_DEBUG=1 to log connects and disconnects to stderr.
 * Exit status 0 on success; 1 with one line on stderr on a fatal error (e.g. auth_failed).
 */
#define _POSIX_C_SOURCE 200809L

#include "telemetry.h"
#include "telemetry_posix.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Control frames, a 16 KiB receive buffer and a 256 KiB queue (~5000 counter readings):
 * all the memory the client uses. */
static uint8_t buffer[300u * 1024u];

/* Longest wait for the last ACKs; the client reconnects and resends meanwhile. */
#define FLUSH_TIMEOUT_MS 120000u

static void on_log(void *user, const char *line)
{
    (void)user;
    fprintf(stderr, "counter: %s\n", line);
}

static int64_t wall_clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int fail(const char *what, int rc)
{
    fprintf(stderr, "counter: %s: %s\n", what, tm_strerror(rc));
    return 1;
}

int main(void)
{
    tm_client client;
    tm_config cfg;
    tm_transport transport;
    tm_posix posix;
    const char *count_env = getenv("TELEMETRY_COUNT");
    const char *debug = getenv("TELEMETRY_DEBUG");
    uint64_t count = count_env && *count_env ? strtoull(count_env, NULL, 10) : 1000, i;
    int64_t t0;
    const tm_stats *st;
    int rc;

    tm_config_defaults(&cfg);
    cfg.address = getenv("TELEMETRY_ADDRESS");
    if (!cfg.address || !*cfg.address)
        cfg.address = "127.0.0.1:7878";
    cfg.device_id = getenv("TELEMETRY_DEVICE");
    cfg.token = getenv("TELEMETRY_TOKEN");
    if (!cfg.device_id || !*cfg.device_id || !cfg.token || !*cfg.token) {
        fprintf(stderr, "counter: set TELEMETRY_DEVICE and TELEMETRY_TOKEN "
                        "(from `telemetry devices add <name>`)\n");
        return 1;
    }
    if (debug && *debug && strcmp(debug, "0") != 0)
        cfg.cb.on_log = on_log;
    tm_posix_transport(&transport, &posix);
    rc = tm_client_init(&client, &cfg, &transport, buffer, sizeof buffer);
    if (rc != TM_OK)
        return fail("init", rc);

    t0 = wall_clock_ns();
    for (i = 1; i <= count; i++) {
        tm_reading r;
        memset(&r, 0, sizeof r);
        r.sensor = "example/counter";
        r.kind = "counter";
        r.ts_ns = t0 + (int64_t)(i - 1) * 1000000; /* one per millisecond of device time */
        r.value = tm_uint(i);
        /* a full queue drains while we poll: batches go out and ACKs free their room */
        while ((rc = tm_client_add(&client, &r, NULL)) == TM_ERR_QUEUE_FULL) {
            rc = tm_client_poll(&client, 1000);
            if (rc != TM_OK)
                return fail("sending", rc);
        }
        if (rc != TM_OK)
            return fail("queueing a reading", rc);
    }
    rc = tm_client_flush(&client, FLUSH_TIMEOUT_MS);
    if (rc != TM_OK)
        return fail("waiting for ACKs", rc);
    tm_client_close(&client);

    st = tm_client_stats(&client);
    printf("sent %llu readings: %llu accepted, %llu duplicate, %llu rejected\n",
           (unsigned long long)count, (unsigned long long)st->readings_accepted,
           (unsigned long long)st->readings_duplicate, (unsigned long long)st->readings_rejected);
    return 0;
}
