/*
 * telemetry_posix.h - the tm_transport for POSIX systems: TCP sockets (IPv4 and IPv6),
 * CLOCK_MONOTONIC, nanosleep and /dev/urandom. A microcontroller port writes its own
 * seven functions instead (see README.md, "Porting").
 */
#ifndef TELEMETRY_POSIX_H
#define TELEMETRY_POSIX_H

#include "telemetry.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tm_posix {
    int fd; /* -1 when not connected */
} tm_posix;

/* Fills *t with the POSIX functions, using *ctx as their state. Addresses are
 * "host:port" or "[v6-address]:port". */
void tm_posix_transport(tm_transport *t, tm_posix *ctx);

#ifdef __cplusplus
}
#endif

#endif
