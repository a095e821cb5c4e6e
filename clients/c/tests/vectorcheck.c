/*
 * vectorcheck.c - runs the library's encoder and decoder on commands read from stdin, one
 * per line, and prints one result line each. tests/clients/test_client_c.py turns every
 * vector in tests/vectors/ (every .json file) into these commands and compares the answers.
 *
 * Strings are hex ("-" for the empty string); values are prefix tokens:
 *   value := n | T | F | f <16 hex digits: float64 bits> | i <int64> | u <uint64>
 *          | s <hex> | m <count> (<key hex> <value>)*
 *   reading := R <sensor hex> <kind hex> <ts int64> <value> <unit: n | s <hex>>
 *              <tags: n | m <count> (<key hex> <value hex>)*>
 * Commands:
 *   reading <reading>                          -> msgpack hex of the reading
 *   batch <seq> <count> <reading>*             -> frame hex
 *   hello <dev> <token> <agent> <version> <dropped> [<stream>] -> frame hex
 *   ping <nonce> | pong <nonce> | bye <reason> | error <code> <message> <fatal 0|1>
 *   decode <frame hex>                         -> JSON message or {"error": code}
 *   feed <agent|collector> <state> <eof 0|1> <chunk bytes> <hex>
 *                                              -> JSON list of events / errors
 * Output "ERR <code>" when an encoder refuses its input.
 */
#include "telemetry_wire.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


#include "spec.h"

static uint8_t out[POOL_BYTES];
static uint8_t body[TM_MAX_FRAME_BYTES];

static void print_hex(const uint8_t *p, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        printf("%02x", p[i]);
    printf("\n");
}

static void print_result(int rc, tm_writer *w)
{
    if (rc != TM_OK)
        printf("ERR %d\n", rc);
    else
        print_hex(w->buf, w->len);
}

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

static void json_msg(const tm_msg *m)
{
    printf("{\"type\":\"%s\",\"fields\":{", tm_msg_name(m->type));
    switch (m->type) {
    case TM_MSG_HELLO:
        printf("\"version\":%" PRIu64 ",\"device_id\":", m->u.hello.version);
        json_str(m->u.hello.device_id);
        printf(",\"token\":");
        json_str(m->u.hello.token);
        printf(",\"agent\":");
        json_str(m->u.hello.agent);
        printf(",\"agent_version\":");
        json_str(m->u.hello.agent_version);
        printf(",\"dropped\":%" PRIu64 ",\"stream\":", m->u.hello.dropped);
        json_str(m->u.hello.stream);
        break;
    case TM_MSG_WELCOME:
        printf("\"version\":%" PRIu64 ",\"last_seq\":%" PRIu64 ",\"max_frame_bytes\":%" PRIu64
               ",\"max_batch_readings\":%" PRIu64 ",\"heartbeat_ms\":%" PRIu64
               ",\"minor\":%" PRIu64,
               m->u.welcome.version, m->u.welcome.last_seq, m->u.welcome.max_frame_bytes,
               m->u.welcome.max_batch_readings, m->u.welcome.heartbeat_ms, m->u.welcome.minor);
        break;
    case TM_MSG_BATCH:
        printf("\"seq\":%" PRIu64 ",\"count\":%" PRIu32, m->u.batch.seq, m->u.batch.count);
        break;
    case TM_MSG_ACK: {
        tm_reject_iter it;
        tm_reject r;
        int first = 1;
        printf("\"seq\":%" PRIu64 ",\"accepted\":%" PRIu64 ",\"duplicate\":%" PRIu64
               ",\"rejects\":[",
               m->u.ack.seq, m->u.ack.accepted, m->u.ack.duplicate);
        tm_rejects_begin(&it, m);
        while (tm_rejects_next(&it, &r)) {
            printf("%s{\"index\":%" PRIu64 ",\"code\":", first ? "" : ",", r.index);
            json_str(r.code);
            printf(",\"path\":");
            json_str(r.path);
            printf(",\"message\":");
            json_str(r.message);
            printf("}");
            first = 0;
        }
        printf("]");
        break;
    }
    case TM_MSG_RETRY:
        printf("\"seq\":%" PRIu64 ",\"reason\":", m->u.retry.seq);
        json_str(m->u.retry.reason);
        printf(",\"retry_after_ms\":%" PRIu64, m->u.retry.retry_after_ms);
        break;
    case TM_MSG_PING:
    case TM_MSG_PONG:
        printf("\"nonce\":%" PRIu64, m->u.ping.nonce);
        break;
    case TM_MSG_ERROR:
        printf("\"code\":");
        json_str(m->u.error.code);
        printf(",\"message\":");
        json_str(m->u.error.message);
        printf(",\"fatal\":%s,\"seq\":%" PRIu64, m->u.error.fatal ? "true" : "false",
               m->u.error.seq);
        break;
    case TM_MSG_BYE:
        printf("\"reason\":");
        json_str(m->u.bye.reason);
        break;
    default:
        break;
    }
    printf("}}\n");
}

static void cmd_decode(void)
{
    size_t n = unhex(tok(), out);
    tm_msg m;
    tm_wire_error err;
    uint32_t len;
    if (n < 4)
        die("frame shorter than its header");
    len = (uint32_t)out[0] << 24 | (uint32_t)out[1] << 16 | (uint32_t)out[2] << 8 | out[3];
    if (len != n - 4) {
        printf("{\"error\":\"length\"}\n");
        return;
    }
    if (tm_decode_body(out + 4, n - 4, &m, &err) != TM_OK)
        printf("{\"error\":\"%s\"}\n", err.code);
    else
        json_msg(&m);
}

static void cmd_feed(void)
{
    const char *role = tok(), *state = tok();
    int eof = atoi(tok());
    size_t chunk = (size_t)strtoul(tok(), NULL, 10);
    size_t n = unhex(tok(), out), pos = 0;
    tm_conn conn;
    tm_frame_reader fr;
    tm_state st = TM_STATE_READY;
    int first = 1, closed = 0;
    if (strcmp(state, "await_hello") == 0)
        st = TM_STATE_AWAIT_HELLO;
    else if (strcmp(state, "await_welcome") == 0)
        st = TM_STATE_AWAIT_WELCOME;
    tm_conn_init(&conn, strcmp(role, "agent") == 0 ? TM_ROLE_AGENT : TM_ROLE_COLLECTOR, st);
    tm_frame_init(&fr, body, sizeof body);
    printf("[");
    while (!closed && pos < n) {
        uint8_t *dst;
        size_t want, take;
        int rc;
        tm_frame_want(&fr, &dst, &want);
        take = want < chunk ? want : chunk;
        if (take > n - pos)
            take = n - pos;
        memcpy(dst, out + pos, take);
        pos += take;
        rc = tm_frame_got(&fr, take);
        if (rc == TM_ERR_FRAME_TOO_LARGE) {
            printf("%s{\"error\":\"frame_too_large\",\"fatal\":true}", first ? "" : ",");
            closed = 1;
        } else if (rc == TM_FRAME_READY) {
            tm_msg m;
            tm_wire_error err;
            if (tm_conn_receive(&conn, fr.buf, fr.body_len, &m, &err) == TM_OK)
                printf("%s{\"event\":\"%s\"}", first ? "" : ",", tm_msg_name(m.type));
            else
                printf("%s{\"error\":\"%s\",\"fatal\":%s}", first ? "" : ",", err.code,
                       err.fatal ? "true" : "false");
            closed = conn.state == TM_STATE_CLOSED;
        } else {
            continue;
        }
        first = 0;
    }
    if (!closed && eof && tm_frame_partial(&fr))
        printf("%s{\"error\":\"truncated_frame\",\"fatal\":true}", first ? "" : ",");
    printf("]\n");
}

int main(void)
{
    while (fgets(line, sizeof line, stdin)) {
        char *cmd;
        tm_writer w;
        int rc = TM_OK;
        size_t len = strlen(line);
        if (len && line[len - 1] == '\n')
            line[len - 1] = '\0';
        pool_used = fields_used = tags_used = 0;
        save = line;
        cmd = strtok_r_compat(line);
        if (!cmd)
            continue;
        tm_writer_init(&w, out, sizeof out);
        if (strcmp(cmd, "reading") == 0) {
            reading_tok(&readings[0]);
            rc = tm_encode_reading(&w, &readings[0]);
            print_result(rc, &w);
        } else if (strcmp(cmd, "batch") == 0) {
            uint64_t seq = strtoull(tok(), NULL, 10);
            size_t count = (size_t)strtoul(tok(), NULL, 10), i;
            if (count > MAX_READINGS)
                die("too many readings");
            for (i = 0; i < count; i++)
                reading_tok(&readings[i]);
            print_result(tm_encode_batch(&w, seq, readings, count), &w);
        } else if (strcmp(cmd, "hello") == 0) {
            tm_hello h;
            char *rest;
            h.device_id = str_tok();
            h.token = str_tok();
            h.agent = str_tok();
            h.agent_version = str_tok();
            h.dropped = strtoull(tok(), NULL, 10);
            rest = strtok_r_compat(NULL);
            if (rest) {
                size_t k = strcmp(rest, "-") == 0 ? 0 : strlen(rest) / 2;
                char *s = pool + pool_used;
                unhex(rest, (uint8_t *)s);
                s[k] = '\0';
                pool_used += k + 1;
                h.stream = s;
            } else {
                h.stream = NULL;
            }
            print_result(tm_encode_hello(&w, &h), &w);
        } else if (strcmp(cmd, "ping") == 0) {
            print_result(tm_encode_ping(&w, strtoull(tok(), NULL, 10)), &w);
        } else if (strcmp(cmd, "pong") == 0) {
            print_result(tm_encode_pong(&w, strtoull(tok(), NULL, 10)), &w);
        } else if (strcmp(cmd, "bye") == 0) {
            print_result(tm_encode_bye(&w, str_tok()), &w);
        } else if (strcmp(cmd, "error") == 0) {
            const char *code = str_tok(), *msg = str_tok();
            print_result(tm_encode_error(&w, code, msg, atoi(tok())), &w);
        } else if (strcmp(cmd, "decode") == 0) {
            cmd_decode();
        } else if (strcmp(cmd, "feed") == 0) {
            cmd_feed();
        } else {
            die("unknown command");
        }
        fflush(stdout);
    }
    return 0;
}
