/*
 * telemetry.h - a C99 client for the sensor-telemetry collector (wire protocol v1, with
 * the additive v1.1 fields).
 *
 *   - No allocation: the client lives in a caller-owned tm_client and one caller-supplied
 *     buffer holds its receive buffer, its control frames and its queue of readings.
 *   - I/O through a tm_transport (function pointers): telemetry_posix.h provides one for
 *     POSIX sockets; a microcontroller port supplies its own.
 *   - Single-threaded and blocking: tm_client_poll() / tm_client_flush() do the network
 *     work (connect, HELLO, batches, ACKs, RETRY, heartbeats, reconnect with backoff) for
 *     at most the time they are given.
 *
 * Delivery: readings are queued (tm_client_add) and sent in batches, one batch in flight.
 * A batch leaves the queue when the collector ACKs it (its rejected readings are reported
 * through on_reject), or when the collector answers it with a non-fatal ERROR (it can
 * never be accepted: its readings are counted as dropped). After a lost connection the
 * unacknowledged batch is resent with the same seq. The queue lives in memory, so every
 * tm_client_init() starts a new v1.1 stream (a random 128-bit id) whose seq starts at 1.
 */
#ifndef TELEMETRY_H
#define TELEMETRY_H

#include "telemetry_wire.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TM_CLIENT_NAME "telemetry-c"
#define TM_CLIENT_VERSION "0.1.0"

/* ---------------------------------------------------------------- transport shim */

/* Everything the client needs from the platform. Return codes are TM_OK or TM_ERR_*. */
typedef struct tm_transport {
    void *ctx;
    /* Open the one connection to `address` (its form is the shim's: "host:port" for
     * POSIX) within timeout_ms: TM_OK, TM_ERR_TIMEOUT or TM_ERR_IO. */
    int (*connect)(void *ctx, const char *address, uint32_t timeout_ms);
    /* Send all n bytes within timeout_ms: TM_OK, TM_ERR_TIMEOUT or TM_ERR_IO. */
    int (*send)(void *ctx, const uint8_t *buf, size_t n, uint32_t timeout_ms);
    /* Receive 1..n bytes, waiting at most timeout_ms: the count, 0 at end of stream,
     * TM_ERR_TIMEOUT when nothing arrived, TM_ERR_IO. */
    long (*recv)(void *ctx, uint8_t *buf, size_t n, uint32_t timeout_ms);
    /* Close the connection (no-op when none is open). */
    void (*close)(void *ctx);
    /* A monotonic clock in milliseconds. */
    uint64_t (*now_ms)(void *ctx);
    /* Sleep (between reconnect attempts). */
    void (*sleep_ms)(void *ctx, uint32_t ms);
    /* n random bytes (the stream id, backoff jitter): TM_OK or TM_ERR_IO. */
    int (*random)(void *ctx, uint8_t *buf, size_t n);
} tm_transport;

/* ---------------------------------------------------------------- callbacks */

typedef struct tm_ack_info {
    uint64_t seq;
    uint64_t first_id;    /* id (from tm_client_add) of the batch's first reading */
    uint32_t count;       /* readings in the batch: ids first_id .. first_id + count - 1 */
    uint64_t accepted;    /* stored now */
    uint64_t duplicate;   /* already stored (a resend) */
    uint32_t rejected;    /* invalid: one on_reject call each */
} tm_ack_info;

typedef struct tm_reject_info {
    uint64_t reading_id;  /* the id tm_client_add returned for it */
    uint64_t seq;
    uint64_t index;       /* its index in the batch */
    tm_str code;          /* reject code (§6), e.g. "out_of_range" */
    tm_str path;          /* field, e.g. "value", "value.lat", "tags.site"; may be empty */
    tm_str message;
} tm_reject_info;

typedef struct tm_callbacks {
    void (*on_ack)(void *user, const tm_ack_info *ack);
    void (*on_reject)(void *user, const tm_reject_info *rej);
    /* A batch the collector refused with a non-fatal ERROR (it can never be accepted):
     * readings first_id .. first_id + count - 1 are dropped; `code` is the ERROR code. */
    void (*on_drop)(void *user, uint64_t first_id, uint32_t count, tm_str code);
    /* One line of diagnostics (connects, disconnects and why, protocol errors). */
    void (*on_log)(void *user, const char *line);
} tm_callbacks;

/* ---------------------------------------------------------------- configuration */

typedef struct tm_config {
    const char *address;       /* handed to transport->connect; POSIX: "host:port" */
    const char *device_id;     /* registered with `telemetry devices add` */
    const char *token;
    const char *agent;         /* default TM_CLIENT_NAME */
    const char *agent_version; /* default TM_CLIENT_VERSION */
    /* v1.1 stream id (1..64 of [A-Za-z0-9_.:-]); NULL: 32 random hex digits at init. Set
     * it only if the queue and seq counter survive restarts (they do not here). */
    const char *stream;
    uint32_t max_batch_readings;  /* default 100; WELCOME may lower it */
    uint32_t max_frame_bytes;     /* largest BATCH frame sent, default 65536; WELCOME may lower it */
    uint32_t rx_frame_bytes;      /* largest frame accepted from the collector, default 16384 */
    uint32_t heartbeat_ms;        /* 0: WELCOME's heartbeat_ms; else the smaller of both */
    uint32_t connect_timeout_ms;  /* default 5000 */
    uint32_t backoff_initial_ms;  /* default 500 */
    uint32_t backoff_max_ms;      /* default 30000 */
    tm_callbacks cb;
    void *user;                   /* passed to every callback */
} tm_config;

/* Fills *cfg with the defaults (all strings NULL, no callbacks). */
void tm_config_defaults(tm_config *cfg);

/* ---------------------------------------------------------------- client */

typedef struct tm_stats {
    uint64_t readings_queued;     /* accepted by tm_client_add */
    uint64_t readings_accepted;   /* ACK: stored */
    uint64_t readings_duplicate;  /* ACK: already stored */
    uint64_t readings_rejected;   /* ACK: invalid */
    uint64_t readings_dropped;    /* refused batches + tm_client_count_dropped */
    uint64_t batches_sent;        /* BATCH frames written, resends included */
    uint64_t batches_acked;
    uint64_t resends;             /* batches sent again after a reconnect */
    uint64_t retries;             /* RETRY answers */
    uint64_t connects;            /* sessions that reached WELCOME */
    uint64_t disconnects;         /* sessions lost after WELCOME */
    uint64_t connect_failures;    /* connects or handshakes that failed */
    uint64_t auth_failures;
    uint64_t bad_frames;          /* frames from the collector we could not use */
    uint64_t pings_sent;
} tm_stats;

/* The client. Its fields are private: use the functions below. */
typedef struct tm_client {
    tm_config cfg;
    tm_transport t;
    tm_conn conn;
    tm_frame_reader fr;
    uint8_t *ctl;             /* control frames out: HELLO, PING, PONG, ERROR, BYE */
    size_t ctl_cap;
    uint8_t *ring;            /* queued readings, msgpack back to back */
    size_t ring_cap, ring_head, ring_used;
    uint32_t ring_count;
    uint64_t first_id;        /* id of the oldest queued reading */
    int link;                 /* 0 down, 1 awaiting WELCOME, 2 ready */
    int inflight;             /* the first inflight_count queued readings were sent as seq */
    uint64_t inflight_seq;
    uint32_t inflight_count;
    int resend;               /* the in-flight batch must be sent again */
    int retry_wait;
    uint64_t retry_at_ms;
    uint64_t next_seq;
    uint64_t next_attempt_ms;
    uint32_t attempt;
    uint64_t hello_ms, last_rx_ms, last_ping_ms, batch_sent_ms;
    uint32_t heartbeat_ms, max_batch, max_frame;
    uint64_t minor;
    uint64_t ping_nonce;
    uint64_t dropped_unreported, dropped_in_hello;
    int pending_rc;           /* an error for the caller, returned by the next poll/flush */
    int progress;             /* an ACK or drop happened during this poll */
    uint32_t rng;
    char stream[TM_MAX_STREAM_CHARS + 1];
    tm_stats stats;
    char logbuf[200];
} tm_client;

/* Set up a client in `buf` (len bytes): cfg->rx_frame_bytes for the receive buffer, a
 * few hundred bytes for control frames, the rest for the queue of readings (a counter
 * reading takes ~50 bytes). Nothing is allocated and no I/O happens except
 * transport->random for the stream id. The config's strings are not copied: they must
 * outlive the client. TM_OK, TM_ERR_CONFIG (missing field, buffer too small) or TM_ERR_IO. */
int tm_client_init(tm_client *c, const tm_config *cfg, const tm_transport *t, uint8_t *buf,
                   size_t len);

/* Queue one reading (encoded now: its strings need not outlive the call). *id (may be
 * NULL) receives its id: ids count up from 1 and identify it in on_reject / on_ack.
 * TM_ERR_QUEUE_FULL: no room; poll to make some, or give up and count it with
 * tm_client_count_dropped. TM_ERR_INVALID: the wire cannot carry it (a string over 4096
 * bytes or not UTF-8, NULL sensor/kind/key, more than 64 tags or map fields, a map
 * inside a map). The collector validates everything else and rejects per reading. */
int tm_client_add(tm_client *c, const tm_reading *r, uint64_t *id);

/* Do network work for at most timeout_ms; returns earlier once a batch was ACKed or
 * dropped. Connects (with backoff) when needed, so the queue drains while you poll.
 * Returns TM_OK, or an error the caller must act on: TM_ERR_AUTH (device unknown or
 * wrong token), TM_ERR_VERSION, TM_ERR_REFUSED (HELLO refused, e.g. a bad stream id),
 * TM_ERR_FRAME_TOO_LARGE (the collector sent a frame over rx_frame_bytes). The queue is
 * kept; polling again retries after the backoff. Lost connections are not errors. */
int tm_client_poll(tm_client *c, uint32_t timeout_ms);

/* Poll until every queued reading is ACKed (or dropped): TM_OK, TM_ERR_TIMEOUT, or one
 * of tm_client_poll's errors. */
int tm_client_flush(tm_client *c, uint32_t timeout_ms);

/* Count readings the caller discarded (e.g. after TM_ERR_QUEUE_FULL); they are reported
 * to the collector in the next HELLO's `dropped`. */
void tm_client_count_dropped(tm_client *c, uint64_t n);

/* Send BYE (when connected) and close the connection. The queue is kept. */
void tm_client_close(tm_client *c);

const tm_stats *tm_client_stats(const tm_client *c);
/* Readings queued and not yet ACKed or dropped (the in-flight batch included). */
size_t tm_client_pending(const tm_client *c);
/* This client's v1.1 stream id. */
const char *tm_client_stream(const tm_client *c);
/* 1 when a session with the collector is up (WELCOME received). */
int tm_client_connected(const tm_client *c);

#ifdef __cplusplus
}
#endif

#endif /* TELEMETRY_H */
