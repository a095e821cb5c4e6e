/*
 * loadavg.c - sends the machine's 1-minute load average every second as a gauge
 * (sensor `<hostname>/loadavg-1m`, tags {"source": "loadavg"}), forever, from
 * /proc/loadavg (Linux). Same environment as counter.c (TELEMETRY_ADDRESS,
 * TELEMETRY_DEVICE, TELEMETRY_TOKEN); rejected readings and connection changes are
 * logged to stderr. Stop it with Ctrl-C.
 */
#define _POSIX_C_SOURCE 200809L

#include "telemetry.h"
#include "telemetry_posix.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PERIOD_MS 1000u

static uint8_t buffer[64u * 1024u];

static void on_log(void *user, const char *line)
{
    (void)user;
    fprintf(stderr, "loadavg: %s\n", line);
}

static void on_reject(void *user, const tm_reject_info *r)
{
    (void)user;
    fprintf(stderr, "loadavg: reading %llu rejected: %.*s at %.*s: %.*s\n",
            (unsigned long long)r->reading_id, (int)r->code.len, r->code.ptr, (int)r->path.len,
            r->path.ptr, (int)r->message.len, r->message.ptr);
}

static int read_loadavg(double *out)
{
    FILE *f = fopen("/proc/loadavg", "r");
    int ok;
    if (!f)
        return 0;
    ok = fscanf(f, "%lf", out) == 1;
    fclose(f);
    return ok;
}

static int64_t wall_clock_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int main(void)
{
    static const tm_tag tags[] = {{"source", "loadavg"}};
    tm_client client;
    tm_config cfg;
    tm_transport transport;
    tm_posix posix;
    char host[64], sensor[96];
    int rc;

    tm_config_defaults(&cfg);
    cfg.address = getenv("TELEMETRY_ADDRESS");
    if (!cfg.address || !*cfg.address)
        cfg.address = "127.0.0.1:7878";
    cfg.device_id = getenv("TELEMETRY_DEVICE");
    cfg.token = getenv("TELEMETRY_TOKEN");
    if (!cfg.device_id || !cfg.token) {
        fprintf(stderr, "loadavg: set TELEMETRY_DEVICE and TELEMETRY_TOKEN\n");
        return 1;
    }
    cfg.cb.on_log = on_log;
    cfg.cb.on_reject = on_reject;
    if (gethostname(host, sizeof host) != 0)
        strcpy(host, "host");
    host[sizeof host - 1] = '\0';
    snprintf(sensor, sizeof sensor, "%s/loadavg-1m", host);
    tm_posix_transport(&transport, &posix);
    rc = tm_client_init(&client, &cfg, &transport, buffer, sizeof buffer);
    if (rc != TM_OK) {
        fprintf(stderr, "loadavg: init: %s\n", tm_strerror(rc));
        return 1;
    }
    for (;;) {
        double load;
        uint64_t next = transport.now_ms(transport.ctx) + PERIOD_MS, now;
        if (read_loadavg(&load)) {
            tm_reading r;
            memset(&r, 0, sizeof r);
            r.sensor = sensor;
            r.kind = "gauge";
            r.ts_ns = wall_clock_ns();
            r.value = tm_float(load);
            r.tags = tags;
            r.tag_count = 1;
            if (tm_client_add(&client, &r, NULL) == TM_ERR_QUEUE_FULL)
                tm_client_count_dropped(&client, 1); /* collector away too long: newest lost */
        }
        /* the rest of the second goes to the network: batches, ACKs, heartbeats, reconnects */
        while ((now = transport.now_ms(transport.ctx)) < next) {
            rc = tm_client_poll(&client, (uint32_t)(next - now));
            if (rc == TM_ERR_AUTH) {
                fprintf(stderr, "loadavg: %s\n", tm_strerror(rc));
                return 1;
            }
        }
    }
}
