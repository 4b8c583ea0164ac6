/* JSON written as Python's json.dumps(value, ensure_ascii=False) writes it
 * (", " and ": " between items, keys in their order, non-ASCII as it is,
 * floats as repr gives them): what the `tojson` filter of transformers'
 * chat templates prints, so that a renderer gives the same bytes for tools
 * and tool-call arguments. Runs in the worker. */
#ifndef EMBER_PYJSON_H
#define EMBER_PYJSON_H

#include "common.h"

#include <jansson.h>

/* Appends v to b (b->failed on no memory). */
void py_json_dump(struct sbuf *b, const json_t *v);

/* Appends s[0..n) (valid UTF-8) as a Python json.dumps string. */
void py_json_str(struct sbuf *b, const char *s, size_t n);

/* A tool call's arguments as the templates that take them as an object
 * print them (tojson of json.loads(text), as vLLM hands them over): text
 * parsed and dumped, or when it is not JSON, the text as a string. A
 * malloc'd string, or NULL when out of memory. */
char *py_json_of_text(const char *text);

#endif
