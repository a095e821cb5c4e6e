/*
 * spec.h - the test programs' line format for readings (see vectorcheck.c): hex strings
 * and prefix-coded values, parsed into tm_reading structs backed by static pools.
 * Included by one .c file per program.
 */
#ifndef TM_TEST_SPEC_H
#define TM_TEST_SPEC_H

#include "telemetry_wire.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LINE_MAX_BYTES (4u << 20)
#define POOL_BYTES (4u << 20)
#define MAX_READINGS 20000u
#define MAX_FIELDS 65536u

static char line[LINE_MAX_BYTES];
static char pool[POOL_BYTES];
static size_t pool_used;
static tm_reading readings[MAX_READINGS];
static tm_field fields[MAX_FIELDS];
static size_t fields_used;
static tm_tag tags[MAX_FIELDS];
static size_t tags_used;
static char *save;

static void die(const char *what)
{
    fprintf(stderr, "vectorcheck: %s\n", what);
    exit(2);
}

/* Space-separated tokens of the current line (C99 has no strtok_r). */
static char *strtok_r_compat(char *start)
{
    char *t;
    if (start)
        save = start;
    while (*save == ' ')
        save++;
    if (!*save)
        return NULL;
    t = save;
    while (*save && *save != ' ')
        save++;
    if (*save)
        *save++ = '\0';
    return t;
}

static char *tok(void)
{
    char *t = strtok_r_compat(NULL);
    if (!t)
        die("missing token");
    return t;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    die("bad hex digit");
    return 0;
}

static size_t unhex(const char *h, uint8_t *dst)
{
    size_t n = strlen(h), i;
    if (strcmp(h, "-") == 0)
        return 0;
    if (n % 2)
        die("odd hex length");
    for (i = 0; i < n / 2; i++)
        dst[i] = (uint8_t)(hexval(h[2 * i]) << 4 | hexval(h[2 * i + 1]));
    return n / 2;
}

static const char *str_tok(void)
{
    const char *h = tok();
    size_t n = strcmp(h, "-") == 0 ? 0 : strlen(h) / 2;
    char *s;
    if (pool_used + n + 1 > POOL_BYTES)
        die("pool full");
    s = pool + pool_used;
    unhex(h, (uint8_t *)s);
    s[n] = '\0';
    pool_used += n + 1;
    return s;
}

static tm_value value_tok(void)
{
    const char *t = tok();
    switch (t[0]) {
    case 'n':
        return tm_nil();
    case 'T':
        return tm_bool(1);
    case 'F':
        return tm_bool(0);
    case 'f': {
        uint64_t bits = strtoull(tok(), NULL, 16);
        double d;
        memcpy(&d, &bits, sizeof d);
        return tm_float(d);
    }
    case 'i':
        return tm_int((int64_t)strtoll(tok(), NULL, 10));
    case 'u':
        return tm_uint((uint64_t)strtoull(tok(), NULL, 10));
    case 's':
        return tm_text(str_tok());
    case 'm': {
        size_t n = (size_t)strtoul(tok(), NULL, 10), i;
        tm_field *f = fields + fields_used;
        if (fields_used + n > MAX_FIELDS)
            die("too many fields");
        fields_used += n;
        for (i = 0; i < n; i++) {
            f[i].key = str_tok();
            f[i].value = value_tok();
        }
        return tm_map(f, n);
    }
    default:
        die("bad value token");
    }
    return tm_nil();
}

static void reading_tok(tm_reading *r)
{
    const char *t = tok();
    if (strcmp(t, "R") != 0)
        die("expected R");
    r->sensor = str_tok();
    r->kind = str_tok();
    r->ts_ns = (int64_t)strtoll(tok(), NULL, 10);
    r->value = value_tok();
    t = tok();
    r->unit = t[0] == 's' ? str_tok() : NULL;
    t = tok();
    if (t[0] == 'm') {
        size_t n = (size_t)strtoul(tok(), NULL, 10), i;
        tm_tag *g = tags + tags_used;
        if (tags_used + n > MAX_FIELDS)
            die("too many tags");
        tags_used += n;
        for (i = 0; i < n; i++) {
            g[i].key = str_tok();
            g[i].value = str_tok();
        }
        r->tags = g;
        r->tag_count = n;
    } else {
        r->tags = NULL;
        r->tag_count = 0;
    }
}

#endif
