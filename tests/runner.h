/* What every test runner shares: failure messages, CHECK, running a table
 * of tests with --only, the closing line, and capturing a command's output.
 * Header-only; included once by each runner's main file. */
#ifndef EMBER_TEST_RUNNER_H
#define EMBER_TEST_RUNNER_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

#define SKIP 77

struct test {
	const char *name;
	int (*fn)(void); /* 0 passed, SKIP skipped, anything else failed */
};

/* Prints an indented reason and returns 1, for `return fail(...)`. */
static inline int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline int fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("    ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	return 1;
}

#define CHECK(cond, ...)                                                        \
	do {                                                                    \
		if (!(cond))                                                    \
			return fail(__VA_ARGS__);                               \
	} while (0)

/* Runs the tests (only the one called only, when not NULL), printing PASS,
 * FAIL or SKIP for each and then "N passed, N failed, N skipped". Returns
 * the process's exit status. */
static inline int run_tests(const struct test *tests, size_t n, const char *only,
			    void (*before_each)(void))
{
	int passed = 0, failed = 0, skipped = 0;
	for (size_t i = 0; i < n; i++) {
		if (only && strcmp(only, tests[i].name) != 0)
			continue;
		if (before_each)
			before_each();
		fflush(stdout);
		int rc = tests[i].fn();
		printf("%s %s\n", rc == 0 ? "PASS" : rc == SKIP ? "SKIP" : "FAIL", tests[i].name);
		passed += rc == 0;
		failed += rc != 0 && rc != SKIP;
		skipped += rc == SKIP;
	}
	printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
	return failed ? 1 : 0;
}

/* A runner's option "--flag VALUE": value points at where VALUE goes. */
struct runner_opt {
	const char *flag;
	const char **value;
};

/* Reads --only NAME (into *only) and the runner's own options from argv.
 * Returns 0, or prints the usage of prog and returns -1 on anything else. */
static inline int runner_args(int argc, char **argv, const char *prog,
			      const struct runner_opt *opts, size_t n, const char **only)
{
	*only = NULL;
	for (int i = 1; i < argc; i += 2) {
		bool known = i + 1 < argc && strcmp(argv[i], "--only") == 0;
		if (known)
			*only = argv[i + 1];
		for (size_t k = 0; !known && k < n && i + 1 < argc; k++)
			if (strcmp(argv[i], opts[k].flag) == 0) {
				*opts[k].value = argv[i + 1];
				known = true;
			}
		if (!known) {
			fprintf(stderr, "usage: %s [--only NAME]", prog);
			for (size_t k = 0; k < n; k++)
				fprintf(stderr, " [%s VALUE]", opts[k].flag);
			fprintf(stderr, "\n");
			return -1;
		}
	}
	return 0;
}

/* Runs cmd with the shell, keeps up to cap - 1 bytes of its output in out
 * (NUL-terminated), and returns its exit status, or -1. */
static inline int run_capture(const char *cmd, char *out, size_t cap)
{
	FILE *p = popen(cmd, "r");
	if (!p)
		return -1;
	size_t n = fread(out, 1, cap - 1, p);
	out[n] = 0;
	int st = pclose(p);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

#endif
