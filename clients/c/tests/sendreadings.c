/*
 * sendreadings.c - drives one tm_client over POSIX sockets from commands on stdin, for the
 * end-to-end tests. Settings from the environment: TELEMETRY_ADDRESS, TELEMETRY_DEVICE,
 * TELEMETRY_TOKEN, and optionally TELEMETRY_HEARTBEAT_MS, TELEMETRY_BACKOFF_MAX_MS,
 * TELEMETRY_MAX_BATCH, TELEMETRY_QUEUE_BYTES.
 *
 * Commands (one per line; readings in the format of spec.h):
 *   add <reading>                      queue one reading
 *   counter <sensor hex> <ts0> <n>     queue n counter readings 1..n, 1 ms apart
 *   flush <ms> | poll <ms> | close
 * Output: JSON lines. Callbacks print {"ack": ...}, {"reject": ...}, {"drop": ...} as they
 * happen; every command ends with a line {"done": "<command>", "rc": <code>, ...}.
 */
#include "telemetry.h"
#include "telemetry_posix.h"
#include "spec.h"

#include <inttypes.h>

static void json_str(tm_str s)
{
    size_t i;
    putchar('"');
    for (i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static void on_ack(void *user, const tm_ack_info *a)
{
    (void)user;
    printf("{\"ack\":{\"seq\":%" PRIu64 ",\"first_id\":%" PRIu64 ",\"count\":%" PRIu32
           ",\"accepted\":%" PRIu64 ",\"duplicate\":%" PRIu64 ",\"rejected\":%" PRIu32 "}}\n",
           a->seq, a->first_id, a->count, a->accepted, a->duplicate, a->rejected);
}

static void on_reject(void *user, const tm_reject_info *r)
{
    (void)user;
    printf("{\"reject\":{\"id\":%" PRIu64 ",\"seq\":%" PRIu64 ",\"index\":%" PRIu64 ",\"code\":",
           r->reading_id, r->seq, r->index);
    json_str(r->code);
    printf(",\"path\":");
    json_str(r->path);
    printf(",\"message\":");
    json_str(r->message);
    printf("}}\n");
}

static void on_drop(void *user, uint64_t first_id, uint32_t count, tm_str code)
{
    (void)user;
    printf("{\"drop\":{\"first_id\":%" PRIu64 ",\"count\":%" PRIu32 ",\"code\":", first_id, count);
    json_str(code);
    printf("}}\n");
}

static void on_log(void *user, const char *text)
{
    (void)user;
    fprintf(stderr, "sendreadings: %s\n", text);
}

static uint32_t env_u32(const char *name, uint32_t dflt)
{
    const char *v = getenv(name);
    return v && *v ? (uint32_t)strtoul(v, NULL, 10) : dflt;
}

static void done(tm_client *c, const char *cmd, int rc)
{
    const tm_stats *s = tm_client_stats(c);
    printf("{\"done\":\"%s\",\"rc\":%d,\"pending\":%lu,\"stream\":\"%s\",\"stats\":{"
           "\"queued\":%" PRIu64 ",\"accepted\":%" PRIu64 ",\"duplicate\":%" PRIu64
           ",\"rejected\":%" PRIu64 ",\"dropped\":%" PRIu64 ",\"batches_sent\":%" PRIu64
           ",\"batches_acked\":%" PRIu64 ",\"resends\":%" PRIu64 ",\"retries\":%" PRIu64
           ",\"connects\":%" PRIu64 ",\"disconnects\":%" PRIu64 ",\"connect_failures\":%" PRIu64
           ",\"auth_failures\":%" PRIu64 ",\"bad_frames\":%" PRIu64 ",\"pings_sent\":%" PRIu64
           "}}\n",
           cmd, rc, (unsigned long)tm_client_pending(c), tm_client_stream(c), s->readings_queued,
           s->readings_accepted, s->readings_duplicate, s->readings_rejected, s->readings_dropped,
           s->batches_sent, s->batches_acked, s->resends, s->retries, s->connects, s->disconnects,
           s->connect_failures, s->auth_failures, s->bad_frames, s->pings_sent);
    fflush(stdout);
}

static uint8_t buffer[4u << 20];

int main(void)
{
    tm_client client;
    tm_config cfg;
    tm_transport t;
    tm_posix px;
    size_t queue_bytes;
    int rc;

    tm_config_defaults(&cfg);
    cfg.address = getenv("TELEMETRY_ADDRESS");
    cfg.device_id = getenv("TELEMETRY_DEVICE");
    cfg.token = getenv("TELEMETRY_TOKEN");
    cfg.heartbeat_ms = env_u32("TELEMETRY_HEARTBEAT_MS", 0);
    cfg.backoff_initial_ms = 50;
    cfg.backoff_max_ms = env_u32("TELEMETRY_BACKOFF_MAX_MS", 500);
    cfg.max_batch_readings = env_u32("TELEMETRY_MAX_BATCH", 100);
    cfg.cb.on_ack = on_ack;
    cfg.cb.on_reject = on_reject;
    cfg.cb.on_drop = on_drop;
    cfg.cb.on_log = on_log;
    queue_bytes = env_u32("TELEMETRY_QUEUE_BYTES", 1u << 20);
    if (queue_bytes > sizeof buffer - 65536)
        queue_bytes = sizeof buffer - 65536;
    tm_posix_transport(&t, &px);
    rc = tm_client_init(&client, &cfg, &t, buffer, queue_bytes + 32768);
    if (rc != TM_OK) {
        fprintf(stderr, "sendreadings: init: %s\n", tm_strerror(rc));
        return 1;
    }
    while (fgets(line, sizeof line, stdin)) {
        char *cmd;
        size_t len = strlen(line);
        if (len && line[len - 1] == '\n')
            line[len - 1] = '\0';
        pool_used = fields_used = tags_used = 0;
        cmd = strtok_r_compat(line);
        if (!cmd)
            continue;
        if (strcmp(cmd, "add") == 0) {
            uint64_t id = 0;
            reading_tok(&readings[0]);
            rc = tm_client_add(&client, &readings[0], &id);
            printf("{\"added\":%" PRIu64 "}\n", id);
            done(&client, cmd, rc);
        } else if (strcmp(cmd, "counter") == 0) {
            const char *sensor = str_tok();
            int64_t ts0 = (int64_t)strtoll(tok(), NULL, 10);
            uint64_t n = strtoull(tok(), NULL, 10), i;
            rc = TM_OK;
            for (i = 1; i <= n && rc == TM_OK; i++) {
                tm_reading r;
                memset(&r, 0, sizeof r);
                r.sensor = sensor;
                r.kind = "counter";
                r.ts_ns = ts0 + (int64_t)(i - 1) * 1000000;
                r.value = tm_uint(i);
                while ((rc = tm_client_add(&client, &r, NULL)) == TM_ERR_QUEUE_FULL) {
                    rc = tm_client_poll(&client, 100);
                    if (rc != TM_OK)
                        break;
                }
            }
            done(&client, cmd, rc);
        } else if (strcmp(cmd, "flush") == 0) {
            rc = tm_client_flush(&client, (uint32_t)strtoul(tok(), NULL, 10));
            done(&client, cmd, rc);
        } else if (strcmp(cmd, "poll") == 0) {
            rc = tm_client_poll(&client, (uint32_t)strtoul(tok(), NULL, 10));
            done(&client, cmd, rc);
        } else if (strcmp(cmd, "close") == 0) {
            tm_client_close(&client);
            done(&client, cmd, TM_OK);
        } else {
            die("unknown command");
        }
    }
    tm_client_close(&client);
    return 0;
}
